"""Model weights that are not diffusers models: a registry, a verified download cache and licences.

Each `Asset` names one file (or one zip archive that is unpacked into a folder named after the
asset), where to get it, its sha256, size and licence. `asset_path` hands out the cached file and
downloads it on first use: the transfer streams into ``<assets dir>/.partial/<file>.part`` (resumed
with an HTTP ``Range`` request after an interruption), the size and sha256 are checked, and only then
is the file moved into place with ``os.replace`` (same file system, so atomic); a file that fails a
check is deleted. In offline mode (``HF_HUB_OFFLINE=1`` or ``MAGICAPTURE_OFFLINE=1``) nothing is
downloaded and `AssetMissing` says which file to put where.

Trust on first use: an entry whose ``sha256`` is ``None`` is accepted on its first complete download
or import, and that file's hash is recorded in ``<assets dir>/hashes.json``; later downloads and
imports of the same asset must match it.

One module a job: `registry` (the entries, licences), `layout` (the cache folder and each asset's
place in it), `download` (the HTTP transfer), `install` (checks, unpacking, recorded hashes),
`cache` (`asset_path`, `download_asset`, `import_asset`, `list_assets`), `errors`.
"""

from engine.assets.cache import AssetStatus, asset_path, download_asset, import_asset, list_assets
from engine.assets.download import Progress
from engine.assets.errors import (
    AssetCorrupt,
    AssetError,
    AssetHashMismatch,
    AssetInterrupted,
    AssetMissing,
    AssetNetworkError,
    AssetServerError,
    AssetSizeMismatch,
    NonCommercialAsset,
    UnknownAsset,
)
from engine.assets.install import HASHES_FILE
from engine.assets.layout import (
    ASSETS_ENV,
    OFFLINE_ENVS,
    PARTIAL_DIR,
    STANDIN_MARKER,
    assets_dir,
    demo_standins,
    is_present,
    offline,
    target_path,
)
from engine.assets.registry import COMMERCIAL_ALTERNATIVES, REGISTRY, Asset, get_asset, licence_notice

__all__ = [
    "ASSETS_ENV",
    "COMMERCIAL_ALTERNATIVES",
    "HASHES_FILE",
    "OFFLINE_ENVS",
    "PARTIAL_DIR",
    "REGISTRY",
    "STANDIN_MARKER",
    "Asset",
    "AssetCorrupt",
    "AssetError",
    "AssetHashMismatch",
    "AssetInterrupted",
    "AssetMissing",
    "AssetNetworkError",
    "AssetServerError",
    "AssetSizeMismatch",
    "AssetStatus",
    "NonCommercialAsset",
    "Progress",
    "UnknownAsset",
    "asset_path",
    "assets_dir",
    "demo_standins",
    "download_asset",
    "get_asset",
    "import_asset",
    "is_present",
    "licence_notice",
    "list_assets",
    "offline",
    "target_path",
]
