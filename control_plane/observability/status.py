"""The status page at `/`: what is loaded where, what is hot, what is pending and why, is it healthy.

Server-rendered HTML (Jinja, no JavaScript; a meta refresh reloads it). Access: requests from loopback
need no token when FLEET_STATUS_OPEN_ON_LOOPBACK is on (the default; a local stack, kubectl
port-forward), everyone else presents the read token once at /login and keeps it in an HttpOnly cookie.
The page shows no secrets (no tokens, no keys) either way.
"""
from __future__ import annotations

from flask import Blueprint, current_app, make_response, redirect, render_template, request, url_for
from markupsafe import Markup

from control_plane.observability.auth import COOKIE, from_loopback, presented_token, token_valid
from control_plane.observability.snapshot import take_snapshot

bp = Blueprint("status", __name__, template_folder="templates")
HOTTEST = 15


def _allowed() -> bool:
    settings = current_app.extensions["observability"]
    return (settings.status_open_on_loopback and from_loopback()) or token_valid(presented_token(), "read")


def human_bytes(value: float | int | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def hottest_models(loadtests: list[dict]) -> tuple[list[dict], int | None]:
    """The most requested models of the latest load test that has per-model rows."""
    for test in loadtests:
        rows = (test.get("results") or {}).get("rows") or []
        if rows:
            return sorted(rows, key=lambda r: r.get("requests", 0), reverse=True)[:HOTTEST], test["id"]
    return [], None


def latency_plot(results: dict | None, width: int = 420, height: int = 140) -> Markup:
    """An inline SVG of a load test's per-model p50/p99, hottest models first (no JavaScript, no files)."""
    rows = sorted((results or {}).get("rows") or [], key=lambda r: r.get("requests", 0), reverse=True)[:40]
    if not rows:
        return Markup("")
    top = max(max(r.get("p99_ms", 0) for r in rows), 1e-9)
    step = min(width / len(rows), 28.0)
    bars = []
    for i, row in enumerate(rows):
        for key, colour, shrink in (("p99_ms", "#e4a11b", 0.0), ("p50_ms", "#2f6db5", 0.25)):
            h = (height - 20) * row.get(key, 0) / top
            bars.append(f'<rect x="{i * step + step * shrink / 2:.1f}" y="{height - h:.1f}" '
                        f'width="{max(step * (0.8 - shrink), 1):.1f}" height="{h:.1f}" fill="{colour}">'
                        f'<title>{row.get("name", "")}: {key[:3]} {row.get(key, 0):.1f} ms</title></rect>')
    svg = (f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="p50 and p99 latency per model">'
           f'<text x="2" y="12" font-size="11">p99 (amber) / p50 (blue) per model, max {top:.1f} ms</text>'
           + "".join(bars) + "</svg>")
    return Markup(svg)


@bp.app_template_filter("bytes")
def _bytes_filter(value):
    return human_bytes(value)


@bp.get("/")
def page():
    if not _allowed():
        return redirect(url_for("status.login"))
    state = current_app.extensions["fleet"]
    snap = take_snapshot(state)
    hottest, hottest_from = hottest_models(snap.latest_loadtests)
    settings = current_app.extensions["observability"]
    return render_template("status.html", snap=snap, hottest=hottest, hottest_from=hottest_from,
                           plot=latency_plot, refresh=settings.status_refresh_s)


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        token = request.form.get("token", "")
        if token_valid(token, "read"):
            response = make_response(redirect(url_for("status.page")))
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                                max_age=12 * 3600)
            return response
        error = "that token is not valid: use the control plane's API token (FLEET_API_TOKEN)"
    return render_template("login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout():
    response = make_response(redirect(url_for("status.login")))
    response.delete_cookie(COOKIE)
    return response
