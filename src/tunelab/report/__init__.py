"""Self-contained HTML reports and the plots they embed (inline SVG, no external assets)."""
