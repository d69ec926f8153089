"""Plain SVG charts for the benchmark results, written as text (no plotting library):
`bars` (horizontal grouped bars, one row per label), `lines` (series of (x, y) points), and
`stack` to put several charts one above the other in one file."""

from xml.sax.saxutils import escape

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
FONT = 'font-family="sans-serif" font-size="12"'
TITLE = 'font-family="sans-serif" font-size="15"'
SMALL = 'font-family="sans-serif" font-size="10"'


def _nice_max(v):
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return step * mag
    return 10 * mag


def _fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def _svg(width, height, body):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">\n<rect width="100%" height="100%" fill="white"/>\n'
            + body + "</svg>\n")


def bars(title, labels, series, unit, width=760):
    """`series`: [(name, [value per label or None])]. Returns (body, width, height)."""
    left, right, top, row_gap = 210, 90, 50, 8
    bar_h = 14
    row_h = bar_h * len(series) + row_gap
    height = top + row_h * len(labels) + 40
    vmax = _nice_max(max((v for _, vs in series for v in vs if v is not None), default=1))
    plot_w = width - left - right
    out = [f'<text x="{width / 2}" y="20" text-anchor="middle" {TITLE}>{escape(title)}</text>']
    for k in range(5):
        x = left + plot_w * k / 4
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 36}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 22}" text-anchor="middle" {FONT}>{_fmt(vmax * k / 4)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" {FONT}>{escape(unit)}</text>')
    for i, label in enumerate(labels):
        y0 = top + i * row_h
        out.append(f'<text x="{left - 8}" y="{y0 + row_h / 2:.1f}" text-anchor="end" {FONT}>{escape(label)}</text>')
        for j, (_, vs) in enumerate(series):
            v = vs[i]
            if v is None:
                continue
            w = plot_w * v / vmax
            y = y0 + j * bar_h
            out.append(f'<rect x="{left}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 2}" fill="{COLOURS[j % 10]}"/>')
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 4:.1f}" {SMALL}>{v:,.0f}</text>')
    for j, (name, _) in enumerate(series):
        x = left + j * 130
        out.append(f'<rect x="{x}" y="30" width="10" height="10" fill="{COLOURS[j % 10]}"/>')
        out.append(f'<text x="{x + 14}" y="39" {FONT}>{escape(name)}</text>')
    return "\n".join(out) + "\n", width, height


def lines(title, series, xlabel, ylabel, width=760, height=300):
    """`series`: {name: [(x, y)]}. Returns (body, width, height)."""
    left, right, top, bottom = 70, 170, 36, 44
    pts = [p for ps in series.values() for p in ps if p[1] is not None]
    xmax = _nice_max(max((p[0] for p in pts), default=1))
    ymax = _nice_max(max((p[1] for p in pts), default=1))
    pw, ph = width - left - right, height - top - bottom
    X = lambda x: left + pw * x / xmax  # noqa: E731
    Y = lambda y: top + ph - ph * y / ymax  # noqa: E731
    out = [f'<text x="{left + pw / 2}" y="20" text-anchor="middle" {TITLE}>{escape(title)}</text>']
    for k in range(5):
        y = top + ph * k / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{_fmt(ymax * (4 - k) / 4)}</text>')
        x = left + pw * k / 4
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" {FONT}>{_fmt(xmax * k / 4)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle" {FONT}>{escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" {FONT} '
               f'transform="rotate(-90 14 {top + ph / 2})">{escape(ylabel)}</text>')
    for j, (name, ps) in enumerate(series.items()):
        c = COLOURS[j % 10]
        good = [(x, y) for x, y in ps if y is not None]
        if good:
            path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in good)
            out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
            for x, y in good if len(good) <= 12 else []:
                out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{c}"/>')
        ly = top + 10 + j * 18
        out.append(f'<rect x="{left + pw + 12}" y="{ly - 9}" width="10" height="10" fill="{c}"/>')
        out.append(f'<text x="{left + pw + 26}" y="{ly}" {FONT}>{escape(name)}</text>')
    return "\n".join(out) + "\n", width, height


def stack(charts):
    """One SVG document with `charts` ((body, width, height) each) one above the other."""
    width = max(w for _, w, _ in charts)
    y, out = 0, []
    for body, _, h in charts:
        out.append(f'<g transform="translate(0 {y})">\n{body}</g>\n')
        y += h
    return _svg(width, y, "".join(out))


def write(path, *charts):
    with open(path, "w") as f:
        f.write(stack(list(charts)))
