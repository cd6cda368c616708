"""The page script of the app: the density heatmap's clicks, plot redraws on resize, where messages show."""

from __future__ import annotations

from viz.sparsity import DENSITY_META

HIDDEN = "accel-hidden"  # elements the page script hides (wiring, not widgets)
DENSITY_CLICK = "density-click"  # the hidden button a click on the density heatmap presses
# The page script (1) links the density heatmap to the step and layer pickers: gradio's Plot has no click event, so
# it listens for clicks on the figure whose layout.meta is viz.sparsity.DENSITY_META, keeps the hovered cell
# ("step,layer") and presses a hidden button whose event reads it (density_click); (2) redraws plots at their width
# whenever their box changes size: a plot drawn while its tab was hidden comes out 700 px wide, and plotly's own
# "responsive" redraw only listens to window resizes; (3) puts messages at the bottom right, off the buttons.
PAGE_SCRIPT = f"""() => {{
  const style = document.createElement('style');  // messages at the bottom right: never over the top buttons
  style.textContent = '.toast-wrap {{ top: auto !important; bottom: 16px; }}';
  document.head.appendChild(style);
  const box = () => document.querySelector('#{DENSITY_CLICK}');
  const hide = () => document.querySelectorAll('.{HIDDEN}').forEach((e) => {{ e.style.display = 'none'; }});
  let pending = null;
  const redraw = () => {{
    clearTimeout(pending);
    pending = setTimeout(() => window.dispatchEvent(new Event('resize')), 150);
  }};
  const sized = new ResizeObserver(redraw);
  const watched = new WeakSet();
  const watch = () => document.querySelectorAll('.js-plotly-plot').forEach((gd) => {{
    const frame = gd.parentElement;
    if (frame && !watched.has(frame)) {{ watched.add(frame); sized.observe(frame); }}
  }});
  new MutationObserver(() => {{ hide(); watch(); }}).observe(document.body, {{childList: true, subtree: true}});
  hide();
  watch();
  document.addEventListener('click', (e) => {{
    if (e.target.closest && e.target.closest('[role=tab]')) redraw();
    const gd = e.target.closest && e.target.closest('.js-plotly-plot');
    if (!gd || !gd.layout || gd.layout.meta !== '{DENSITY_META}' || !(gd._hoverdata || []).length) return;
    const p = gd._hoverdata[0];
    window.accelDensityCell = p.x + ',' + p.y;
    if (box()) box().click();
  }}, true);
}}"""
