"""Makes the helper modules beside the tests (crd_schema, kustomize_lite) importable in any import mode."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
