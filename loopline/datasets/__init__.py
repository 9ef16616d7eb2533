"""Labelled datasets: their layout on disk, the label geometry rules, and the importers of
labels that other tools and laboratories write.

- :mod:`.layout`: the dataset folder (``images/``, YOLO-seg ``labels/``, ``coco.json``,
  ``data.yaml``), the class names and the label readers and writers, shared by the generator
  (``loopline synth``), the importers (``loopline import``) and the labelling page
  (``loopline label``);
- :mod:`.raster`: one rule for a dislocation's label polygon and one for rasterising a label
  polygon into a mask;
- :mod:`.importers` and :mod:`.formats`: real labels (tanaka strokes, instance masks, COCO,
  labelme, CVAT, napari, box formats) into that layout; :mod:`.import_command` is
  ``loopline import``.
"""
