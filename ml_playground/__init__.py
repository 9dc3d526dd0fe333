"""ml-playground: prepare text datasets, train and sample GPT models, finetune and export them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ml-playground")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"
