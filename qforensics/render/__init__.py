"""The renderers: each module turns one command's document (findings, the info document, map rows, the
structure graph, the report's facts) into what the user reads or receives. They sit above the checks,
recovery, the info document and the report's facts, and below the command line; nothing below imports them.
"""
