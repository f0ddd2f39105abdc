"""xtf 0.1.0: the x-transformers 2.31.10 layout and function, stamped; nothing to rewrite.

The first xtf release joins the x-transformers lineage here (identity step).
"""

revision = "xtf==0.1.0"
down_revision = "x-transformers==2.30.5"
reversible = True
ops: list = []
