"""The `mvos` command. Each subcommand lives in its layer and is imported only when it runs,
so `mvos --help` stays fast and a missing optional extra only affects the command that needs it."""

from __future__ import annotations

import importlib
import sys

import click

from mvos import __version__

# name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "segment": ("mvos.runtime.cli", "segment_command", "Segment objects through a video from a first-frame mask."),
    "info": ("mvos.runtime.cli", "info_command", "List variants, parameter counts and where weights come from."),
    "eval": ("mvos.training.evaluate", "eval_command", "Evaluate on DAVIS 2016/2017 or YouTube-VOS (J&F)."),
    "synth": ("mvos.training.synth", "synth_command", "Generate a synthetic DAVIS-layout dataset."),
    "train": ("mvos.training.trainer", "train_command", "Train a student with distillation from a teacher."),
    "import-backbone": ("mvos.training.imagenet", "import_backbone_command",
                        "Convert a TFLite ImageNet MobileNetV2 classifier into key encoder weights."),
    "soup": ("mvos.training.soup", "soup_command", "Average checkpoints into a uniform or greedy model soup."),
    "export": ("mvos.export.cli", "export_command", "Export TFLite subgraphs with an explicit memory state."),
    "bench": ("mvos.device.cli", "bench_command", "Benchmark exported models on a phone over adb (or the host)."),
    "plot": ("mvos.device.cli", "plot_command", "Plot latency vs memory queue length from a results CSV."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise click.ClickException(
                f"`mvos {name}` needs a package that is not installed ({missing}); "
                f"install the extras: pip install 'mobilevos[dev]'"
            ) from None
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, _, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="mvos")
def cli() -> None:
    """mobilevos: real-time video object segmentation for phones (MobileVOS)."""


def main() -> None:
    from mvos.runtime.errors import MvosError

    try:
        cli.main(standalone_mode=False)
    except MvosError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
