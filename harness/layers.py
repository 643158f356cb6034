"""Where a network's time goes: its layers measured one by one, against the whole network.

Input is the tidy frame of ``harness.store.load_frame`` over runs that measured a network and
its distinct layers (``harness run --suite layers-of:NETWORK``; see
``harness.workloads.layers.decompose``).  Per device x backend x threads x delegate:

* ``layer_table(frame, network)``: one row per distinct layer: its median latency, times the
  number of times the network runs it, its share of the summed layer time and of the network's
  MACs, and its achieved GMAC/s (against the measured roofline when ``ceilings`` are given,
  from ``harness.calibration.load_ceilings``).
* ``layer_breakdown(frame)``: the same per layer type (standard, depthwise, pointwise, fully
  connected, other): share of MACs vs share of measured time, achieved GMAC/s.
* ``fusion_gap(frame)``: per network, the sum of its layers' medians (x counts) over the
  network's own median.  Above 1: the network runs faster than its layers alone (fused
  BatchNorm/activations, layouts kept between layers, caches warm with the previous layer's
  output, one call's overhead instead of one per layer); below 1: time in ops no layer
  workload measures ("other": pooling, residual adds, squeeze-and-excite) or in the glue
  between layers.  With the runtime's own profiler (``op_profile_total_s`` in the records:
  onnxruntime session profiling, torch.profiler), the profiled total over the network median
  is the cross-check: how much of the network's time the profiler attributes to ops.

Only valid measurements (status ``ok``) count; a job measured in several invocations or
runs counts with the median of its medians.  A layer without a measurement leaves the
network's row incomplete (``layers_missing``), never silently smaller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from harness.workloads.layers import LAYER_TYPES, LayerRef, decompose

GROUP = ["device", "backend", "threads", "delegate"]


def _medians(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (GROUP, workload): the median latency over valid jobs, with its cost columns."""
    from harness.analysis import valid

    ok = valid(frame)
    if ok.empty:
        return ok
    ok = ok.copy()
    for key in GROUP:
        if key not in ok:
            ok[key] = ""
    ok["delegate"] = ok["delegate"].fillna("")
    agg: dict[str, Any] = {"latency_median": "median"}
    for column in ("macs", "bytes", "bytes_fp32", "intensity", "device_fingerprint_id", "requested_delegate"):
        if column in ok:
            agg[column] = "first"
    if "op_profile_total_s" in ok:
        agg["op_profile_total_s"] = "median"
    return ok.groupby([*GROUP, "workload_id"], dropna=False, sort=False).agg(agg).reset_index()


def _networks(medians: pd.DataFrame) -> dict[str, list[LayerRef]]:
    """Each measured workload that has layers measured on their own, with its decomposition."""
    measured = set(medians["workload_id"])
    out: dict[str, list[LayerRef]] = {}
    for workload_id in medians["workload_id"].unique():
        try:
            refs = decompose(workload_id)
        except Exception:  # an id this convbench cannot decompose is not a network here
            continue
        layer_ids = {r.workload_id for r in refs if r.workload_id}
        if layer_ids and layer_ids != {workload_id} and layer_ids & measured:
            out[workload_id] = refs
    return out


def _attainable(row: Mapping[str, Any], ceilings: Mapping[Any, Any] | None) -> float:
    if not ceilings:
        return math.nan
    from harness.calibration import ceiling_for

    ceiling = ceiling_for(row, ceilings)
    intensity = row.get("intensity")
    if ceiling is None or not intensity or (isinstance(intensity, float) and math.isnan(intensity)):
        return math.nan
    return ceiling.attainable_for(float(intensity), moved_bytes(row)) / 1e9


def moved_bytes(row: Mapping[str, Any]) -> Any:
    """Bytes the workload moves at its precision (records before int8 have only ``bytes_fp32``)."""
    value = row.get("bytes")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return row.get("bytes_fp32")
    return value


def _tables(frame: pd.DataFrame, ceilings: Mapping[Any, Any] | None = None) -> pd.DataFrame:
    medians = _medians(frame)
    if medians.empty:
        return pd.DataFrame()
    networks = _networks(medians)
    rows = []
    for keys, group in medians.groupby(GROUP, dropna=False, sort=False):
        by_id = {row["workload_id"]: row for _, row in group.iterrows()}
        for network_id, refs in networks.items():
            measured_layers = [r for r in refs if r.workload_id in by_id]
            if not measured_layers:
                continue
            network_macs = sum(r.total_macs for r in refs)
            for ref in refs:
                row = by_id.get(ref.workload_id) if ref.workload_id else None
                median = float(row["latency_median"]) if row is not None else math.nan
                gmacs = ref.macs / median / 1e9 if row is not None and median > 0 else math.nan
                attainable = _attainable({**row, "threads": keys[2]}, ceilings) if row is not None else math.nan
                rows.append({
                    **dict(zip(GROUP, keys, strict=True)), "network": network_id,
                    "layer": ref.workload_id or "other: " + ", ".join(ref.names[:3])
                    + (" ..." if len(ref.names) > 3 else ""),
                    "layer_type": ref.layer_type, "count": ref.count, "names": ", ".join(ref.names),
                    "macs": ref.total_macs, "mac_share": ref.total_macs / network_macs if network_macs else math.nan,
                    "median_s": median, "total_s": median * ref.count if row is not None else math.nan,
                    "measured": row is not None, "gmacs_per_s": gmacs,
                    "attainable_gmacs_per_s": attainable,
                    "pct_of_attainable": gmacs / attainable if attainable and not math.isnan(attainable) else math.nan,
                    "network_median_s": float(by_id[network_id]["latency_median"]) if network_id in by_id
                    else math.nan,
                })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    totals = out.groupby([*GROUP, "network"], dropna=False)["total_s"].transform("sum")
    out["time_share"] = out["total_s"] / totals
    return out


def layer_table(frame: pd.DataFrame, network: str | None = None,
                ceilings: Mapping[Any, Any] | None = None) -> pd.DataFrame:
    """One row per distinct layer of each network (or of ``network``) per device x backend x threads x delegate.

    Columns: GROUP, ``network``, ``layer`` (its workload id; "other: ..." for ops not measured
    alone), ``layer_type``, ``count``, ``names`` (the network's layers it stands for),
    ``macs`` (x count), ``mac_share``, ``median_s`` (one instance), ``total_s`` (x count),
    ``time_share`` (of the summed measured layer time), ``gmacs_per_s``,
    ``attainable_gmacs_per_s`` and ``pct_of_attainable`` (NaN without ``ceilings``),
    ``network_median_s``.
    """
    out = _tables(frame, ceilings)
    if network is not None and not out.empty:
        out = out[out["network"] == network].reset_index(drop=True)
    return out


def layer_breakdown(frame: pd.DataFrame, ceilings: Mapping[Any, Any] | None = None) -> pd.DataFrame:
    """Per GROUP x network x layer type: share of MACs vs share of measured time.

    Columns: GROUP, ``network``, ``layer_type`` (in LAYER_TYPES order), ``layers`` (distinct
    layers), ``count``, ``macs``, ``mac_share``, ``total_s`` (sum of medians x counts),
    ``time_share`` (of all measured layers; the shares of one network sum to 1),
    ``gmacs_per_s`` (the type's MACs over its measured time), ``pct_of_attainable`` (its
    time-weighted mean over the type's layers, NaN without ceilings).  "other" carries the MAC
    share of squeeze-and-excite and no time: it is not measured alone (see ``fusion_gap``).
    """
    table = _tables(frame, ceilings)
    if table.empty:
        return table
    rows = []
    for keys, group in table.groupby([*GROUP, "network"], dropna=False, sort=False):
        for layer_type in LAYER_TYPES:
            part = group[group["layer_type"] == layer_type]
            if part.empty:
                continue
            measured = part[part["measured"]]
            total_s = float(measured["total_s"].sum()) if not measured.empty else math.nan
            macs = int(measured["macs"].sum())
            weighted = measured.dropna(subset=["pct_of_attainable"])
            rows.append({
                **dict(zip([*GROUP, "network"], keys, strict=True)), "layer_type": layer_type,
                "layers": len(part), "count": int(part["count"].sum()), "macs": int(part["macs"].sum()),
                "mac_share": float(part["mac_share"].sum()), "total_s": total_s,
                "time_share": float(measured["time_share"].sum()) if not measured.empty else math.nan,
                "gmacs_per_s": macs / total_s / 1e9 if total_s and not math.isnan(total_s) else math.nan,
                "pct_of_attainable": float((weighted["pct_of_attainable"] * weighted["total_s"]).sum()
                                           / weighted["total_s"].sum()) if not weighted.empty else math.nan,
            })
    return pd.DataFrame(rows)


def fusion_gap(frame: pd.DataFrame) -> pd.DataFrame:
    """Per GROUP x network: the sum of its layers' medians (x counts) against the network's median.

    Columns: GROUP, ``network``, ``network_median_s``, ``layers_sum_s``, ``layers_over_network``
    (the ratio; NaN when the network itself was not measured), ``layers_measured`` and
    ``layers_missing`` (distinct measurable layers with and without a valid measurement; the sum
    counts only measured ones), ``other_ops`` (the network's ops no layer workload measures),
    ``profile_total_s`` and ``profile_over_network`` (the runtime's profiler: the per-inference
    time it attributes to ops, over the network median; NaN without a profile).
    """
    table = _tables(frame)
    if table.empty:
        return table
    medians = _medians(frame)
    profiles = {}
    if "op_profile_total_s" in medians:
        for _, row in medians.iterrows():
            profiles[(*(row[k] for k in GROUP), row["workload_id"])] = row["op_profile_total_s"]
    rows = []
    for keys, group in table.groupby([*GROUP, "network"], dropna=False, sort=False):
        measurable = group[~group["layer"].str.startswith("other: ")]
        measured = measurable[measurable["measured"]]
        network_s = float(group["network_median_s"].iloc[0])
        layers_s = float(measured["total_s"].sum())
        profile = profiles.get(tuple(keys), math.nan)
        profile = float(profile) if profile is not None else math.nan
        rows.append({
            **dict(zip([*GROUP, "network"], keys, strict=True)),
            "network_median_s": network_s, "layers_sum_s": layers_s,
            "layers_over_network": layers_s / network_s if network_s > 0 else math.nan,
            "layers_measured": len(measured), "layers_missing": len(measurable) - len(measured),
            "other_ops": "; ".join(group.loc[~group.index.isin(measurable.index), "names"]),
            "profile_total_s": profile,
            "profile_over_network": profile / network_s if network_s > 0 else math.nan,
        })
    return pd.DataFrame(rows)
