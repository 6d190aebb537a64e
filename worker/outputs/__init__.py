"""Files a worker renders on request (``FileCall``s): plots (``plots``), draws exports
(``draws``).

matplotlib draws without a display here: the Agg backend is chosen before this package
draws anything (Bambi imports pyplot earlier, but pyplot settles its backend only when it
first makes a figure, and ``use`` switches it while no figure exists).
"""

import matplotlib

matplotlib.use("Agg")
