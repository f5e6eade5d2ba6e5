"""The evaluation harness: asks a network (HTTP or libp2p), logs, analyses and reports.  Sits
above the coordinator (its libp2p client asks through it); the task files and the scoring it
uses are the pure ``node.evaluation``."""
