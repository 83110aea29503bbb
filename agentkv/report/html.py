"""`report.html`: one self-contained file (plots embedded as data URIs) that reads at 1280 px without
horizontal scrolling: the headline, the settings, each view with its notes, the plots."""

from __future__ import annotations

import base64
import html

from agentkv.report.views import View, cell

STYLE = """
body{font-family:system-ui,-apple-system,sans-serif;margin:0 auto;padding:1.2em;max-width:1220px;color:#222;
  line-height:1.4}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.6em 0 .4em}
.headline{background:#eef5ff;border-left:5px solid #2b6cb0;padding:.6em 1em;font-size:1.05em}
.headline p{margin:.35em 0}
table{border-collapse:collapse;width:100%;font-size:13px;table-layout:auto}
td,th{border:1px solid #d4d4d4;padding:3px 6px;text-align:right;overflow-wrap:anywhere}
th{background:#f3f3f3;font-weight:600;overflow-wrap:normal;hyphens:manual}td:first-child,th:first-child{text-align:left}
td.missed{color:#b00020;font-weight:600}
.settings th{text-align:left;width:16em}.settings td{text-align:left}
.notes{font-size:12px;color:#555;margin:.3em 0 0 0;padding-left:1.2em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;display:block}figcaption{font-size:12px;color:#555}
"""


def write_html(path: str, title: str, headline: list[str], settings: dict[str, str], views: list[View],
               images: list[tuple[str, bytes]]) -> None:
    esc = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>",
             "<section class='headline' id='headline'>" + "".join(f"<p>{esc(s)}</p>" for s in headline) + "</section>",
             "<table class='settings'>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                                                  for k, v in settings.items()) + "</table>"]
    for v in views:
        head = "".join(f"<th title='{esc(c.meaning)}'>{esc(c.label)}</th>" for c in v.columns)
        body = "".join("<tr>" + "".join(_td(cell(c, row)) for c in v.columns) + "</tr>" for row in v.rows)
        notes = "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in v.notes) + "</ul>" if v.notes else ""
        parts.append(f"<section id='{v.key}'><h2>{esc(v.title)}</h2><table><tr>{head}</tr>{body}</table>{notes}"
                     "</section>")
    parts.append("<section id='plots'><h2>Plots</h2>" + "".join(
        f"<figure><img alt='{esc(cap)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{esc(cap)}</figcaption></figure>" for cap, png in images) + "</section></body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def _td(text: str) -> str:
    return f"<td class='missed'>{html.escape(text)}</td>" if text == "MISSED" else f"<td>{html.escape(text)}</td>"
