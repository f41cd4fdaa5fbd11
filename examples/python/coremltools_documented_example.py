"""coremltools' documented DKMPalettizer example, run on libedkm with only its import changed.

The example is the `Example:` code block of the docstring of
coremltools.optimize.torch.palettization.DKMPalettizer, read from the installed coremltools, so what
runs is coremltools' own text (this file holds no copy of it). Its one import statement is changed:
`from coremltools.optimize.torch.palettization import (...)` becomes `from edkm.torch import (...)`,
the same names; nothing else. The docstring leaves `create_model_loss_and_optimizer()` and `data` to
the reader: here a small regression MLP (two Linear weights above coremltools' default
weight_threshold of 2048 elements, one below), MSE loss, SGD, and 8 batches of random data. After the
example has run (prepare, the training loop with palettizer.step(), finalize), the finalized model is
traced and converted with coremltools.convert, as coremltools' documentation continues.

Run from the repository root (needs torch and coremltools):
    python3 examples/python/coremltools_documented_example.py [--compare] [--show] [--out m.mlpackage]
--compare runs coremltools' original text too, on the same model and data, and checks that the two
Core ML programs hold the same op types. --show prints the example as it runs.
"""
import argparse
import difflib
import inspect
import logging
import os
import sys
import textwrap
import warnings
from collections import Counter

import torch
from torch import nn

try:
    import edkm  # noqa: F401  (the example's changed import: from edkm.torch import ...)
except ImportError:  # the checkout's binding
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

COREMLTOOLS_IMPORT = "from coremltools.optimize.torch.palettization import"
EDKM_IMPORT = "from edkm.torch import"


def documented_example():
    """The code block after 'Example:' in coremltools' DKMPalettizer docstring, dedented."""
    from coremltools.optimize.torch.palettization import DKMPalettizer

    doc = inspect.getdoc(DKMPalettizer)
    after = doc[doc.index("Example:"):]
    block = after[after.index(".. code-block:: python") + len(".. code-block:: python"):]
    lines = []
    for line in block.splitlines()[1:]:
        if line.strip() and not line.startswith((" ", "\t")):
            break  # the docstring's next section ("Args:")
        lines.append(line)
    code = textwrap.dedent("\n".join(lines)).strip() + "\n"
    if code.count(COREMLTOOLS_IMPORT) != 1:
        raise RuntimeError("coremltools' documented example has changed: expected one import of "
                           f"'{COREMLTOOLS_IMPORT}', got:\n{code}")
    return code


def with_import_changed(code):
    return code.replace(COREMLTOOLS_IMPORT, EDKM_IMPORT)


def reader_supplied(seed=0):
    """What the docstring leaves to its reader: create_model_loss_and_optimizer() and data."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 4))
    data = [(torch.randn(32, 16, generator=g), torch.randn(32, 4, generator=g)) for _ in range(8)]

    def create_model_loss_and_optimizer():
        return model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=1e-2)

    return create_model_loss_and_optimizer, data


def run(code, seed=0):
    """Executes the example; returns its finalized `model`."""
    create, data = reader_supplied(seed)
    namespace = {"__name__": "__coremltools_example__", "create_model_loss_and_optimizer": create, "data": data}
    exec(compile(code, "<coremltools DKMPalettizer example>", "exec"), namespace)  # noqa: S102 - the documented example
    return namespace["model"]


def convert(model, out=None):
    """coremltools.convert of the finalized model (an iOS18 ML program); its op types."""
    import coremltools as ct

    example = torch.rand(1, 16)
    traced = torch.jit.trace(model.eval(), example)
    mlmodel = ct.convert(traced, convert_to="mlprogram", inputs=[ct.TensorType(shape=example.shape)],
                         minimum_deployment_target=ct.target.iOS18)
    if out:
        mlmodel.save(out)
    return [op.op_type for op in mlmodel._mil_program.functions["main"].operations]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true", help="run coremltools' original text too")
    parser.add_argument("--show", action="store_true", help="print the example as it runs")
    parser.add_argument("--out", help="save the Core ML model here (.mlpackage)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)

    original = documented_example()
    changed = with_import_changed(original)
    diff = [line for line in difflib.unified_diff(original.splitlines(), changed.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    print("coremltools' documented DKMPalettizer example (its docstring), with the import changed:")
    print("\n".join(diff))
    print(f"changed lines: {len(diff) // 2}")
    if args.show:
        print(changed)

    model = run(changed)
    ops = convert(model, args.out)
    counts = Counter(op for op in ops if op.startswith("constexpr"))
    print("libedkm: trained, finalized, converted; Core ML ops: "
          + ", ".join(f"{op}: {n}" for op, n in sorted(counts.items())))
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    print("distinct values per Linear weight: " + ", ".join(str(w.unique().numel()) for w in weights))
    if args.out:
        print(f"saved {args.out}")
    if args.compare:
        theirs = convert(run(original))
        if theirs != ops:
            print(f"coremltools' own run gives other op types:\n  ours   {ops}\n  theirs {theirs}")
            return 1
        print("same Core ML op types as coremltools' own run of the original text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
