"""``python -m kale_st``: the ``kale-st`` command line."""

from kale_st.cli import main

main()
