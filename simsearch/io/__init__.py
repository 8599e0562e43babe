"""Images in: find files by content, read and decode them safely, preprocess them for an encoder, load many at once.

The only package that imports Pillow. Modules: ``discover`` (finding files, labels), ``decode`` (reading and
decoding, limits), ``preprocess`` (``Preprocess``, letterbox, trim), ``channels`` (the channel rule: colour for a
grey model and the reverse, converted or refused), ``pipeline`` (loading on threads or worker processes).
"""

from simsearch.errors import ImageError
from simsearch.io.channels import CHANNEL_RULES, ChannelTally, channel_rule, check_rule, current_tally, refusal
from simsearch.io.decode import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    Decoded,
    ImageSurvey,
    decode,
    decode_image,
    is_grey,
    read_file,
    save_png,
    survey_images,
)
from simsearch.io.discover import (
    A_FOLDER,
    EMPTY,
    IMAGE_SUFFIXES,
    MISSING,
    NOT_AN_IMAGE,
    NOT_REGULAR,
    ImageFileEntry,
    Skipped,
    display_name,
    find_images,
    label_of,
    sniff_format,
    unreadable,
)
from simsearch.io.pipeline import (
    PROCESS_MIN_IMAGES,
    LoadedImage,
    LoadJob,
    load_batches,
    load_image,
    load_images,
    source_names,
)
from simsearch.io.preprocess import (
    MAX_GAMMA,
    MAX_SIDE,
    RESIZE_MODES,
    Preprocess,
    border_colour,
    letterbox,
    to_array,
    trim,
)

__all__ = [
    "A_FOLDER",
    "CHANNEL_RULES",
    "EMPTY",
    "IMAGE_SUFFIXES",
    "MAX_FILE_BYTES",
    "MAX_GAMMA",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MISSING",
    "NOT_AN_IMAGE",
    "NOT_REGULAR",
    "PROCESS_MIN_IMAGES",
    "RESIZE_MODES",
    "ChannelTally",
    "Decoded",
    "ImageError",
    "ImageFileEntry",
    "ImageSurvey",
    "LoadJob",
    "LoadedImage",
    "Preprocess",
    "Skipped",
    "border_colour",
    "channel_rule",
    "check_rule",
    "current_tally",
    "decode",
    "decode_image",
    "display_name",
    "find_images",
    "is_grey",
    "label_of",
    "letterbox",
    "load_batches",
    "load_image",
    "load_images",
    "read_file",
    "refusal",
    "save_png",
    "sniff_format",
    "source_names",
    "survey_images",
    "to_array",
    "trim",
    "unreadable",
]
