"""The web app `tunelab serve` serves at `/`: server-rendered pages over the jobs service (no build step)."""
