"""Reports: the plot style, the figures of every stage, and the summary page."""
