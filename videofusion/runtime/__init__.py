"""Where the models run: devices and dtypes, CPU offload (per model, per layer, streamed), the fast path,
and :class:`~videofusion.runtime.placement.Placement`, which holds a pipeline's choice among them."""
