import Glibc

// edkm-bench: benchmarks of libedkm through its C ABI (include/edkm.h).
//   edkm-bench speed      uniquified path vs the dense path and a bandwidth probe
//   edkm-bench ablation   the eDKM saved-state memory ablation on a LLaMA-7B decoder layer

setvbuf(stdout, nil, _IOLBF, 0)
let arguments = CommandLine.arguments
let usage = """
usage: edkm-bench speed [options]      (edkm-bench speed --help)
       edkm-bench ablation [options]   (edkm-bench ablation --help)
"""
switch arguments.dropFirst().first {
case "speed": SpeedBench.run(arguments.dropFirst(2))
case "ablation": AblationBench.run(arguments.dropFirst(2))
case "--help", "-h", "help": print(usage)
default:
    fputs(usage + "\n", stderr)
    exit(2)
}
