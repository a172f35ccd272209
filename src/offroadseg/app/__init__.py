"""``offroadseg app``: a local web page to try one or two checkpoints on images.

Layers, top to bottom (imports only point down):

- :mod:`offroadseg.app.ui` builds the Gradio page and turns errors into messages in it;
  it is the only module here that imports Gradio.
- :mod:`offroadseg.app.server` checks the address and launches the page.
- :mod:`offroadseg.app.browse` browses a dataset split (per class, seeded random picks,
  rank in the split worst-first).
- :mod:`offroadseg.app.service` loads the models once, checks uploads and turns one image
  into everything the page shows, through the same predictor, colouring and scoring code
  as ``offroadseg predict``.
"""
