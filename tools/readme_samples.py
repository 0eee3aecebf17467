"""Run the README's marked commands, in order, as a newcomer would, and compare each shown
output with what the run printed, so the samples cannot drift from the program.

    python -m tools.readme_samples --check     # exit 1 and say what differs
    python -m tools.readme_samples --write     # write the real outputs into README.md

How blocks are marked: tools/readme_markdown.py. How outputs are compared and what is masked
(times, ids, keys, secrets, counters): tools/readme_compare.py. What the run is:

- A copy of the checkout (the files git tracks, and the new ones it does not ignore, as they
  are in the working tree) in a temporary folder; every block runs from its root, in order,
  with bash -e -o pipefail. A block sees the shell variables and the folder the blocks before
  it left (`K=$(cat ...)` in one block, `$K` in the next), as in one terminal.
- A clean environment (as `env -i`): PATH, a HOME of its own with the XDG folders under it
  (Cylindria's data dir comes from platformdirs: ~/.local/share/Cylindria), LC_ALL=C.UTF-8.
- Only 127.0.0.1: a URL in a runnable block that names another host (but one under the
  reserved .example and .invalid, which never resolve) fails the run. Ports: each port the
  blocks name (8000, 8188, 8189...) is replaced by a free one (a run of 8 consecutive ones
  for each group of nearby ports, as GPU n listens on the first port + n), CYLINDRIA_PORT and
  COMFYUI_BASE_URL give the programs' defaults the same, and the outputs name the README's
  ports again. A server not told its port (its ready URL's port is near no port its block
  names: the webhook receiver's 9000) keeps the README's. A ready URL whose port takes
  connections before its block starts fails the run, saying so.
- The install commands do not install. `.venv` is made beforehand as a virtualenv of the
  Python running this, whose site-packages reads this environment's (a .pth file), with a
  `pip`; `python3` on PATH is that Python, except that `python3 -m venv .venv` leaves the
  existing `.venv` alone (a real one would replace its interpreter and add pip: seconds,
  and no longer this environment). So `.venv/bin/pip install -c constraints.txt -r
  requirements.txt` runs for real and finds everything already satisfied, without network
  (PIP_NO_INDEX), which also checks that the lock matches what the tests run with.
  `--real-install` (the test's --soak) skips all of that: the README's commands make and fill
  `.venv` from the network with the system's python3 (the caller's PIP_* and proxy
  variables pass through, as the machine's way to the packages).
- A block's output is what it printed on stdout: the answers (curl -i's headers too), the
  keys printed at a first start. Its stderr is shown only when the block fails: curl's
  progress meters (which a terminal does not show), and a server's log, whose lines a
  writer thread interleaves with the printed ones in no fixed order. A block that leaves a
  process running fails the run (the process is stopped). A background block runs in a
  process group of its own until every block has run, then its group is sent SIGTERM
  (SIGKILL if it has not ended in 15 s); its shown output is the beginning of its stdout.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools import readme_compare
from tools.readme_markdown import Step, steps, with_outputs
from tools.readme_sandbox import LOOPBACK, REPO, RunFailed, sandbox

README = REPO / "README.md"
URL_HOST = re.compile(r"\bhttps?://([^/:\s\"'$]+)")
UNRESOLVABLE = (".example", ".invalid")


@dataclass
class Result:
    """What a run found: a problem per shown output that differs, and the real outputs."""

    problems: list[str] = field(default_factory=list)
    outputs: dict[int, str] = field(default_factory=dict)  # output block's line -> rewritten
    printed: dict[int, str] = field(default_factory=dict)  # marker line -> what it printed
    steps: int = 0
    seconds: float = 0.0


def check(readme: Path = README, real_install: bool = False, keep: bool = False) -> Result:
    """Run every marked block of `readme` in order; the differences of its shown outputs.
    RunFailed if a block fails; ValueError if nothing is marked."""
    started = time.monotonic()
    markdown = readme.read_text(encoding="utf-8")
    found = steps(markdown, readme.name)
    if not found:
        raise ValueError(f"{readme} marks no block as runnable: put <!-- run --> on the line "
                         "before each ```bash block to run (tools/readme_markdown.py)")
    for step in found:
        _loopback_only(step)
    result = Result(steps=len(found))
    with sandbox(found, real_install, keep) as box:
        printed = {}
        for number, step in enumerate(found, 1):
            if step.background:
                box.start(step, number)
            else:
                printed[step.line] = box.run(step, number)
        printed.update(box.stop_all())
        result.printed = {line: box.as_shown(text) for line, text in printed.items()}
        for step in found:
            if step.output is not None:
                _compare(step, result.printed[step.line], result)
    result.seconds = time.monotonic() - started
    return result


def _loopback_only(step: Step) -> None:
    """A runnable block calls this machine only. Names under the reserved .example and
    .invalid (RFC 6761) never resolve, so a block may show that such a URL is refused."""
    for host in URL_HOST.findall(step.block.text + " " + (step.ready or "")):
        if host not in LOOPBACK and not host.endswith(UNRESOLVABLE):
            raise ValueError(f"line {step.line}: a runnable block may call 127.0.0.1 only, "
                             f"not {host}")


def _compare(step: Step, real: str, result: Result) -> None:
    """Record how the shown output differs, and what it should say."""
    shown = step.output.text
    problems = readme_compare.differences(shown, real, prefix_only=step.background)
    if problems:
        result.problems.append(f"line {step.output.opening + 1}: the output shown "
                               f"after line {step.line}'s block differs from the run's "
                               "(masked):\n" + "\n".join(problems))
    result.outputs[step.output.opening] = readme_compare.rewritten(shown, real, step.background)


def write(readme: Path = README, real_install: bool = False) -> Result:
    """Run the blocks and write every shown output as the run printed it."""
    result = check(readme, real_install)
    markdown = readme.read_text(encoding="utf-8")
    readme.write_text(with_outputs(markdown, result.outputs), encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tools.readme_samples",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="The rules: see the module's docstring.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="say what differs; exit 1 if any")
    mode.add_argument("--write", action="store_true", help="write the real outputs in")
    parser.add_argument("--readme", type=Path, default=README, help="default: README.md")
    parser.add_argument("--real-install", action="store_true",
                        help="let the install commands install, from the network")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    try:
        if args.write:
            result = write(args.readme, args.real_install)
            print(f"{args.readme}: {len(result.outputs)} outputs written from {result.steps} "
                  f"blocks run in {result.seconds:.0f} s")
            return 0
        result = check(args.readme, args.real_install, args.keep)
    except (RunFailed, ValueError) as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 1
    for problem in result.problems:
        print(f"{args.readme}: {problem}\n", file=sys.stderr)
    print(f"{args.readme}: {result.steps} blocks run in {result.seconds:.0f} s, "
          f"{len(result.outputs)} outputs compared, {len(result.problems)} differ")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
