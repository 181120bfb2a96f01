"""``AsyncArrowQuantV2``: the earlier async API on asyncio.

Each conversion runs in a worker thread (the native code releases the GIL while it reads,
quantizes and writes), so the event loop stays free. At most ``max_concurrent`` conversions run
at once. Progress callbacks (plain functions or coroutine functions) are called on the loop's
thread. Cancelling the awaiting task stops its conversion between tensors; the awaitable
finishes only once the worker has stopped and removed its temporary file, so no partial output
is ever left (a conversion that had already written its last tensor when the cancellation
arrived completes its file; the awaiting task is cancelled all the same).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import models as _models
from .config import DiffusionQuantConfig


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Optional[Callable[..., Any]], *prefix: Any) -> Optional[Callable[[str, float], None]]:
    """A thread-safe progress function that delivers ``callback(*prefix, message, fraction)`` on
    ``loop``'s thread; a coroutine it returns is scheduled there as a task."""
    if callback is None:
        return None
    pending = set()

    def deliver(message: str, fraction: float) -> None:
        result = callback(*prefix, message, fraction)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            pending.add(task)  # keep a reference until it is done
            task.add_done_callback(pending.discard)

    def post(message: str, fraction: float) -> None:
        loop.call_soon_threadsafe(deliver, message, fraction)

    return post


class AsyncArrowQuantV2:
    """Async whole-model quantization (``quantize_diffusion_model_async``,
    ``quantize_multiple_models_async``, ``validate_quality_async``); ``method`` as for
    :class:`ArrowQuantV2`."""

    def __init__(self, max_concurrent: int = 2, *, device: str = "auto", method: str = "minmax") -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if method not in ("minmax", "lsq"):
            raise ValueError(f"Invalid method: {method!r}. Must be 'minmax' or 'lsq'")
        self.max_concurrent = max_concurrent
        self.device = device
        self.method = method
        self._slots: Optional[asyncio.Semaphore] = None
        self._slots_loop: Optional[asyncio.AbstractEventLoop] = None

    def _semaphore(self) -> asyncio.Semaphore:
        # One semaphore per event loop (asyncio primitives belong to the loop that uses them).
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots, self._slots_loop = asyncio.Semaphore(self.max_concurrent), loop
        return self._slots

    async def _run(self, model_path: str, output_path: str, config: Optional[DiffusionQuantConfig], progress: Optional[Callable[[str, float], None]]) -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        async with self._semaphore():
            work = loop.run_in_executor(None, lambda: _models.convert(model_path, output_path, config, progress, cancel, self.device, self.method))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # Stop the worker at its next tensor and wait until it has cleaned up.
                cancel.set()
                try:
                    await work
                except Exception:  # noqa: BLE001 - Cancelled, or an error the cancellation overtook
                    pass
                raise

    async def quantize_diffusion_model_async(
        self,
        model_path: str,
        output_path: str,
        config: Optional[DiffusionQuantConfig] = None,
        progress_callback: Optional[Callable[[str, float], Any]] = None,
    ) -> Dict[str, Any]:
        """``ArrowQuantV2.quantize_diffusion_model`` without blocking the event loop."""
        return await self._run(model_path, output_path, config, _on_loop(asyncio.get_running_loop(), progress_callback))

    async def quantize_multiple_models_async(
        self,
        models: Sequence[Tuple[str, str, Optional[DiffusionQuantConfig]]],
        progress_callback: Optional[Callable[[int, str, float], Any]] = None,
    ) -> List[Dict[str, Any]]:
        """Converts several models, up to ``max_concurrent`` at a time; results in input order.
        ``progress_callback(model_index, message, fraction)``. The first failure cancels the
        others (their outputs are not left behind) and is raised."""
        loop = asyncio.get_running_loop()
        tasks = [
            asyncio.ensure_future(self._run(src, dst, cfg, _on_loop(loop, progress_callback, i)))
            for i, (src, dst, cfg) in enumerate(models)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def validate_quality_async(self, original_path: str, quantized_path: str) -> Dict[str, Any]:
        """``ArrowQuantV2.validate_quality`` in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _models.validate_quality, original_path, quantized_path)
