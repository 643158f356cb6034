"""Waiting for a device to cool down before a job: one rule for every transport.

devices.yaml's ``thermal: {zones, cooldown_c, max_wait_s}`` asks for it.  The runner applies
it on boards and this host (reading sysfs where it runs); the adb transport applies it to a
phone (reading sysfs over adb).  Both give ``wait_until_cool`` a function that reads the
zones, and both report the same record fields and the same progress, so the console shows
a wait the same way whatever the transport (``status_text``).

Zones are ``(zone, type, celsius)`` triples: ``("thermal_zone0", "cpu-thermal", 41.2)``; a
zone is selected by its directory name or its type.
"""

import time

POLL_S = 0.5  # how often the zones are read while waiting
REPORT_S = 1.0  # how often a wait in progress is reported (each report redraws a progress line)


def hottest(zones, wanted=()):
    """The hottest selected zone as ``(zone, type, celsius)``, or None when none matches."""
    chosen = [z for z in zones if not wanted or z[0] in wanted or z[1] in wanted]
    return max(chosen, key=lambda z: z[2]) if chosen else None


def zone_label(zone):
    return "%s (%s)" % (zone[1], zone[0]) if zone[1] != zone[0] else zone[0]


def progress(zone, target_c, waited_s, max_wait_s, timed_out=False, cooled=False):
    """What a wait in progress reports (a JSON object: the runner sends it to the host as is).

    ``cooled``: the wait is over, the device is below the target; ``timed_out``: it is over
    after ``max_wait_s`` and the device is still hot.
    """
    return {"zone": zone[0], "type": zone[1], "celsius": zone[2], "target_c": target_c,
            "waited_s": waited_s, "max_wait_s": max_wait_s, "timed_out": timed_out, "cooled": cooled}


def status_text(report):
    """The progress line of a wait: ``cooling down: cpu-thermal 41.2 °C > 40 °C target (35 s of at most 300 s)``."""
    what = "%s %.1f \u00b0C %s %g \u00b0C target" % (report["type"], report["celsius"],
                                                   ">" if report["celsius"] >= report["target_c"] else "<=",
                                                   report["target_c"])
    if report.get("cooled"):
        return "cooled down in %.0f s: %s" % (report["waited_s"], what)
    if report.get("timed_out"):
        return ("did not cool down within %g s: %s; measuring anyway (the result may be thermally throttled)"
                % (report["max_wait_s"], what))
    return "cooling down: %s (%.0f s of at most %g s)" % (what, report["waited_s"], report["max_wait_s"])


def wait_until_cool(read_zones, target_c, max_wait_s, wanted=(), report=None, poll_s=POLL_S):
    """Wait until the hottest selected zone is below ``target_c``, at most ``max_wait_s`` seconds.

    ``read_zones()`` returns the zones now; ``report(progress)`` (optional) hears about a wait
    while it lasts, at most every REPORT_S and once more when it ends by timing out.  A device
    that is cool at once is not reported at all.  Returns the record fields: ``cooldown_wait_s``,
    ``cooldown_target_c``, and on a timeout ``cooldown_timed_out`` and a ``warning``.
    """
    started = time.monotonic()
    deadline = started + max_wait_s
    reported = None
    while True:
        zone = hottest(read_zones(), wanted)
        waited = time.monotonic() - started
        fields = {"cooldown_wait_s": waited, "cooldown_target_c": target_c}
        if zone is None:
            fields["warning"] = ("no thermal zone matches (%s): cannot wait for the device to cool down"
                                 % (", ".join(wanted) or "any"))
            return fields
        if zone[2] < target_c:
            if report is not None and reported is not None:  # the wait that was shown is over
                report(progress(zone, target_c, waited, max_wait_s, cooled=True))
            return fields
        now = time.monotonic()
        if now >= deadline:
            if report is not None:
                report(progress(zone, target_c, waited, max_wait_s, timed_out=True))
            fields.update(cooldown_timed_out=True,
                          warning="the device did not cool below %g \u00b0C within %g s (hottest: %s at %.1f \u00b0C): "
                                  "the measurement may be thermally throttled"
                                  % (target_c, max_wait_s, zone_label(zone), zone[2]))
            return fields
        if report is not None and (reported is None or now - reported >= REPORT_S):
            report(progress(zone, target_c, waited, max_wait_s))
            reported = now
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
