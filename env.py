"""The search environment: tags, search tools, observations, answer extraction and rewards.

(Skeleton: the tag constants below are the shared contract; the rest is being written.)
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Tags:
    """Every tag string of the trajectory format, in one place (swap in SEARCH_R1 to change format)."""
    think_open: str = "<think>"
    think_close: str = "</think>"
    search_open: str = "<begin_search>"
    search_close: str = "</end_search>"
    result_open: str = "<search_result>"
    result_close: str = "</search_result>"


AUTOCOA = Tags()
SEARCH_R1 = Tags(search_open="<search>", search_close="</search>",
                 result_open="<information>", result_close="</information>")
TAGS = AUTOCOA
