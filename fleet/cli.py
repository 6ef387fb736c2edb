"""The `fleet` command: one entry point whose subcommands delegate to the room that owns the work."""
from __future__ import annotations

import importlib
import logging

import click

from fleet.extras import explain_missing_module


class LazyGroup(click.Group):
    """A group whose heavy subcommands are imported only when they run (click's documented lazy pattern).

    Why: `fleet sync` runs in the server image, which carries only what the data plane needs; importing
    the load-test, report or control-plane commands (locust, matplotlib, flask) at start-up would make it
    fail there. `fleet --help` lists them without importing them. The fleet's own commands live in
    fleet/commands/, one module per job.
    """

    lazy_commands: dict[str, tuple[str, str, str]] = {
        # name: (module, attribute, short help)
        "generate": ("fleet.commands.repository", "generate",
                     "Write N unique models of a profile (tiny MLP/CNN/text, BERT- or ResNet-shaped)."),
        "pack": ("fleet.commands.repository", "pack",
                 "Lay out a Triton repository: packs (default) or dedicated models, configs for cpu/gpu/inf2."),
        "upload": ("fleet.commands.repository", "upload",
                   "Put a Triton repository into S3 (URI: s3://BUCKET/PREFIX); only changed files move."),
        "compile": ("fleet.commands.repository", "compile_",
                    "Compile pack members for Inferentia2 with torch_neuronx.trace (needs the Neuron SDK)."),
        "sync": ("fleet.commands.sync", "sync",
                 "Bring a local repository in step with S3: incremental, verified, atomic per model."),
        "serve": ("fleet.commands.local", "serve",
                  "Run the real tritonserver on 127.0.0.1 (explicit model control) until Ctrl-C."),
        "up": ("fleet.commands.local", "up_command",
               "Start the local stack (S3, N tritonservers, control plane), register models, load-test it."),
        "down": ("fleet.commands.local", "down_command", "Stop everything `fleet up` started."),
        "server": ("fleet.commands.local", "server_commands",
                   "Servers of a running fleet: drain one before it leaves, stop one of the local stack."),
        "deploy": ("fleet.commands.deploy", "deploy", "Deploy the fleet to EKS or ECS and wait until it is ready."),
        "bench": ("fleet.commands.deploy", "bench_command",
                  "Benchmarks against the peers and the limits, side by side in one run."),
        "adfilter": ("adfilter.cli", "adfilter", "OpenRTB bid-request filter: data, training, scoring, model."),
        "control-plane": ("control_plane.server", "control_plane", "The control plane's REST API and reconciler."),
        "loadtest": ("loadtest.cli", "loadtest", "Run locust load tests against Triton."),
        "report": ("loadtest.cli", "report", "Render a load-test report from saved results."),
        "rehearse": ("deploy.rehearse", "rehearse", "Run every EKS/ECS runbook step that can run here."),
        "config": ("fleet.config_docs", "config_group", "Every FLEET_* setting: render docs/configuration.md."),
        "logs": ("control_plane.observability.cli", "logs_command", "The local stack's logs merged in time order."),
        "dashboards": ("control_plane.observability.cli", "dashboards_group",
                       "Render the Grafana, CloudWatch and ECS dashboards and alarms."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module, attribute, _ = self.lazy_commands[name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        # A command without `needs_extra` that still imports torch or tritonserver in a slim install says
        # which extra to install instead of ending in a traceback (fleet/extras.py).
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as error:
            explained = explain_missing_module(error, f"{ctx.command_path} {ctx.invoked_subcommand or ''}".strip())
            if explained is None:
                raise
            raise explained from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy_commands[name][2] if name in self.lazy_commands
                 else click.Group.get_command(self, ctx, name).get_short_help_str(limit=80))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """Serve thousands of unique PyTorch models on NVIDIA Triton.

    Typical flow: generate -> pack -> upload (S3) -> sync (each server) -> serve.
    `make demo` runs all of it, plus the control plane and a load test.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
