"""Layers: the stack's prebuilt Lambda layers, made once and handed to every function that needs them.

`runtime` (onnxruntime, numpy, Powertools) goes to every function; `parquet` (pyarrow) is stacked on it
for the batch functions only. Both are folders written by `make layer`: synth never bundles or runs Docker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aws_cdk import aws_lambda as lambda_
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUNTIME_LAYER_DIR = REPO_ROOT / "layers" / "build" / "runtime"
DEFAULT_PARQUET_LAYER_DIR = REPO_ROOT / "layers" / "build" / "parquet"


@dataclass(frozen=True)
class LayersProps:
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    runtime_dir: Path = DEFAULT_RUNTIME_LAYER_DIR
    """Prebuilt layer folder holding `python/...`."""
    parquet_dir: Path | None = None
    """The parquet layer folder; None leaves the layer out (and the folder unread)."""


def layer_asset_dir(layer_dir: Path, context_key: str) -> Path:
    """The layer folder, or a FileNotFoundError that says how to build it."""
    if not (Path(layer_dir) / "python").is_dir():
        raise FileNotFoundError(
            f"Lambda layer not built: {Path(layer_dir) / 'python'} does not exist. Run `make layer` first "
            f"(or pass `-c slimserve:{context_key}=...` pointing at a folder holding python/).")
    return Path(layer_dir)


class Layers(Construct):
    def __init__(self, scope: Construct, construct_id: str, props: LayersProps | None = None) -> None:
        super().__init__(scope, construct_id)
        self.props = props or LayersProps()
        self.runtime = self._layer("Runtime", layer_asset_dir(self.props.runtime_dir, "layerDir"),
                                   "slimserve runtime dependencies (prebuilt by `make layer`)")
        self.parquet: lambda_.LayerVersion | None = None
        if self.props.parquet_dir is not None:
            self.parquet = self._layer(
                "Parquet", layer_asset_dir(self.props.parquet_dir, "parquetLayerDir"),
                "slimserve pyarrow for Parquet batch scoring, over the runtime layer (prebuilt by `make layer`)")

    def _layer(self, construct_id: str, folder: Path, description: str) -> lambda_.LayerVersion:
        return lambda_.LayerVersion(
            self, construct_id,
            code=lambda_.Code.from_asset(str(folder)),
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_12],
            compatible_architectures=[self.props.architecture],
            description=description,
        )

    def require_parquet(self) -> lambda_.LayerVersion:
        if self.parquet is None:
            raise ValueError("Layers: no parquet layer (LayersProps.parquet_dir is None)")
        return self.parquet
