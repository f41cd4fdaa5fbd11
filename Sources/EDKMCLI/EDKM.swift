import ArgumentParser

/// `edkm`: train-time weight clustering (DKM / eDKM) with libedkm, from the command line.
@main
struct EDKM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edkm",
        abstract: "Weight palettization with libedkm (DKM / eDKM): compress safetensors checkpoints, or see it train.",
        discussion: "Start with `edkm demo` (no arguments, no downloads).",
        version: "edkm (libedkm \(edkmVersion()))",
        subcommands: [PalettizeCommand.self, UnpackCommand.self, InfoCommand.self, DemoCommand.self])
}
