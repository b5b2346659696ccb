"""Data: readers of every source (uint8 images, int labels), the seeded splits, pixel
preprocessing, the inputs one experiment trains on, unlabelled images that stream from disk,
and on-device augmentation.

Nothing here imports the models or the training code: a data set is plain arrays.
"""

from scae.data.sources import Split, load

__all__ = ["Split", "load"]
