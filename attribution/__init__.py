"""attribution: model access, replacement models, attribution graphs (bottom layer).

Importing this package first loads an optimised BLAS on Linux (see ``_blas``);
that is the only import-time action in mlx-circuits.
"""

from attribution import _blas

_blas.preload()

from attribution.sites import SITE_KINDS, Site, SiteError  # noqa: E402

__all__ = ["SITE_KINDS", "Site", "SiteError"]
