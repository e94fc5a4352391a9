"""The `mvos` command. Each subcommand lives in its layer and is imported only when it runs,
so `mvos --help` stays fast and a missing optional extra only affects the command that needs it."""

from __future__ import annotations

import importlib
import os
import sys

import click

from mvos import __version__

# name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "segment": ("mvos.runtime.cli", "segment_command", "Segment objects through a video from a first-frame mask."),
    "info": ("mvos.runtime.cli", "info_command", "List variants, parameter counts and where weights come from."),
    "eval": ("mvos.training.cli", "eval_command", "Evaluate on DAVIS 2016/2017 or YouTube-VOS (J&F)."),
    "synth": ("mvos.training.cli", "synth_command", "Generate a synthetic DAVIS-layout dataset."),
    "train": ("mvos.training.cli", "train_command", "Train a student with distillation from a teacher."),
    "import-backbone": ("mvos.training.cli", "import_backbone_command",
                        "Convert a TFLite ImageNet MobileNetV2 classifier into key encoder weights."),
    "soup": ("mvos.training.cli", "soup_command", "Average checkpoints into a uniform or greedy model soup."),
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def os_error_message(exc: OSError) -> str:
    """'No space left on device: out/dog/00042.png' rather than a traceback."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename2 or exc.filename
    return f"{reason}: {where}" if where else reason


def main() -> None:
    # FFmpeg (inside OpenCV) prints its own complaints about unreadable videos; ours is the one line users see.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    from mvos.runtime.errors import MvosError

    try:
        cli.main(standalone_mode=False)
    except MvosError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # click's own checks (--queue-len range, --variant choice, missing options)
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except OSError as exc:  # no space, read-only, permission: outputs were written to temporary names
        click.echo(f"error: {_one_line(os_error_message(exc))}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
