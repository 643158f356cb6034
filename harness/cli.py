"""The ``harness`` command line.

Start-up must stay instant: torch, onnxruntime, pandas and matplotlib are imported only
inside the commands that need them.  User errors print one line and exit with code 2;
no traceback is shown for them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from harness.errors import UserError


class HarnessGroup(click.Group):
    """Turns UserError into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="convbench")
def main() -> None:
    """convbench: measure standard vs depthwise-separable convolutions and MobileNets
    on CPUs, GPUs, phones and boards, and compare with the theoretical savings."""


def _human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _print_table(title: str, columns: list[str], rows: list[list[str]], footer: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True,
                         min_width=len(column))
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(120, Console().width))
    console.print(table)
    if footer:
        console.print(footer)


@main.group(cls=HarnessGroup, invoke_without_command=True)
@click.option("--suite", "suite_name", default="quick", show_default=True, help="Named suite to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def workloads(ctx: click.Context, suite_name: str, as_json: bool) -> None:
    """List a suite's workloads with their analytic cost."""
    if ctx.invoked_subcommand is not None:
        return
    from harness import workloads as registry
    from harness.catalog import suite_rows

    rows = suite_rows(registry.suite(suite_name))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_table(
        f"suite {suite_name}: {len(rows)} workloads (fp32 bytes; ratio = separable/standard MACs)",
        ["workload", "kind", "MACs", "params", "bytes", "MAC/B", "ratio", "1/N+1/Dk²", "speedup"],
        [[r["workload_id"], r["kind"], _human(r["macs"]), _human(r["params"]), _human(r["bytes_fp32"], "B"),
          f"{r['intensity']:.1f}",
          f"{r['ratio']:.4f}" if r.get("ratio") is not None else "",
          f"{r['theoretical_ratio']:.4f}" if r.get("theoretical_ratio") is not None else "",
          f"{1 / r['ratio']:.2f}x" if r.get("ratio") else ""]
         for r in rows],
    )


@workloads.command("show")
@click.argument("workload_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def workloads_show(workload_id: str, as_json: bool) -> None:
    """Per-layer cost table of one workload, with totals."""
    from harness import workloads as registry
    from harness.cost import network_cost

    cost = network_cost(registry.get(workload_id))
    if as_json:
        click.echo(json.dumps({"workload_id": workload_id, "layers": [layer.row() for layer in cost.layers],
                               "totals": cost.totals()}, indent=2))
        return
    rows = [[layer.name, layer.op, "x".join(map(str, layer.in_shape)), "x".join(map(str, layer.out_shape)),
             _human(layer.macs), _human(layer.params), _human(layer.bytes_fp32, "B"), f"{layer.intensity:.1f}"]
            for layer in cost.layers]
    rows.append(["total", "", "", "", _human(cost.macs), _human(cost.params), _human(cost.bytes_fp32, "B"),
                 f"{cost.intensity:.1f}"])
    _print_table(f"{workload_id}: {len(cost.layers)} layers", ["layer", "op", "in", "out", "MACs", "params",
                 "bytes", "MAC/B"], rows,
                 footer=f"total: {cost.macs:,} MACs, {cost.params:,} parameters, "
                        f"{cost.bytes_fp32:,} bytes fp32, {cost.bytes_int8:,} bytes int8")


def run() -> None:  # console-script entry point
    sys.exit(main())


if __name__ == "__main__":
    run()
