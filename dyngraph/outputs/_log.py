"""TensorBoard logging of curves: one scalar per layer, step = layer index, plus the figure."""
from __future__ import annotations

from typing import Iterable, Optional


def log_curve(writer, curve, tag: Optional[str] = None, figure: bool = True) -> None:
    """Logs a :class:`Curve` to a ``torch.utils.tensorboard.SummaryWriter``.

    Scalars go to ``{tag}`` with the layer index as the step (so TensorBoard draws the curve over
    depth), the std to ``{tag}_std`` when there are repeats, the figure to ``{tag}/figure`` and the
    settings to ``{tag}/settings`` as text.

    Args:
        writer: A ``SummaryWriter`` (anything with ``add_scalar``/``add_figure``/``add_text``).
        curve: The curve to log.
        tag: Scalar tag; defaults to ``'dyngraph/<curve.name>'``.
        figure: Also log the matplotlib figure as an image.

    Example:
        >>> import tempfile, torch, dyngraph as dg
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> c = dg._curve.Curve(['conv1', 'conv2'], torch.tensor([0.1, 0.4]))
        >>> with SummaryWriter(tempfile.mkdtemp()) as w:
        ...     dg.outputs._log.log_curve(w, c)
    """
    for name in ("add_scalar", "add_text"):
        if not callable(getattr(writer, name, None)):
            raise TypeError(f"writer must be a SummaryWriter-like object with {name}(), got "
                            f"{type(writer).__name__}")
    tag = tag or f"dyngraph/{curve.name}"
    repeats = curve.samples.shape[0]
    for i, v in enumerate(curve.values.tolist()):
        writer.add_scalar(tag, v, global_step=i)
        if repeats > 1:
            writer.add_scalar(f"{tag}_std", float(curve.std[i]), global_step=i)
    layer_table = "\n".join(f"| {i} | {n} | {v:.4f} |"
                            for i, (n, v) in enumerate(zip(curve.layers, curve.values.tolist())))
    settings = "\n".join(f"- **{k}**: {v}" for k, v in curve.meta.items() if k != "layers")
    writer.add_text(f"{tag}/settings",
                    f"{settings}\n\n| step | layer | {curve.name} |\n|---|---|---|\n{layer_table}")
    if figure:
        from ._plot import close, plot_curves
        fig = plot_curves([curve], title=tag)
        writer.add_figure(f"{tag}/figure", fig)
        close(fig)
    writer.flush() if callable(getattr(writer, "flush", None)) else None


def log_curves(writer, curves: Iterable, prefix: str = "dyngraph", figure: bool = True) -> None:
    """Logs several curves (modularity, NC1, ID, ...) side by side under ``prefix/<name>``."""
    for c in curves:
        log_curve(writer, c, tag=f"{prefix}/{c.name}", figure=figure)
