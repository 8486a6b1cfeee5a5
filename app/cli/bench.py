"""``jobnode bench``: the benchmark of tests/bench, from a source checkout only."""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Run the benchmark (tests/bench; --help there). Needs the source tree.

    The benchmark measures the node of a checkout (it starts ``python -m app.cli serve``
    there and writes its reports to tests/bench/results), so it is not in the package;
    from an installed package, or with a module it needs missing, this says in one line
    what to do instead of a traceback."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "bench").is_dir():
        raise click.ClickException(
            f"the benchmark runs from a source checkout (tests/bench), not found under {root}: "
            "in the checkout, pip install -e '.[bench]' and run jobnode bench there"
        )
    sys.path.insert(0, str(root))
    try:
        from tests.bench.cli import bench as command
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"the benchmark needs the module {exc.name}, not installed: pip install -e '.[bench]' in {root}"
        ) from None

    command.main(args=ctx.args, prog_name="jobnode bench")
