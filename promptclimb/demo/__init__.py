"""The offline demo: a small CLIP trained here on Fashion-MNIST, its image set, and its checks.

- :mod:`promptclimb.demo.data` builds the demo ImageFolder set from the Debian package
  ``dataset-fashion-mnist``.
- :mod:`promptclimb.demo.train` reproduces the bundled model in ``promptclimb/demo/model``.
- :mod:`promptclimb.demo.check` prints its zero-shot accuracy and how much the prompt matters.
"""

from pathlib import Path

#: The bundled open_clip ``local-dir`` model: load it with ``local-dir:`` + this path.
DEMO_MODEL_DIR = Path(__file__).parent / "model"
