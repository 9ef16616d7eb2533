"""Exports of a run to other tools: napari layers (:mod:`.napari`) and HyperSpy signals
(:mod:`.hyperspy`). Neither imports napari or HyperSpy: they give plain data (napari layer
data tuples) or write a file through RosettaSciIO."""
