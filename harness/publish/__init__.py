"""``harness publish``: a static site over every run in the results store, as ``asv publish`` does.

- ``site``: reads the store once (invocations collapsed), then writes ``index.html`` (change
  points, the latest comparison per device, workloads, runs) and one page + PNG per workload
  (history per series with change points and the reference probe's drift);
- ``html``: the page skeleton and tables, CSS inline.

The site opens offline from any folder: relative links only, no script, no external URL.
"""

from harness.publish.site import SiteResult, build_site, slug

__all__ = ["SiteResult", "build_site", "slug"]
