"""loopline.viewers: the live terminal dashboard and the browser overlay viewer.

Both read the daemon's result stream (see :mod:`loopline.viewers.stream`), turn each message
into one :class:`~loopline.viewers.schema.FrameView` and keep a short history of it in a
:class:`~loopline.viewers.state.ViewState`; only the drawing differs.
"""
