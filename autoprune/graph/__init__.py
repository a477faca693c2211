"""Channel dependency analysis (tracing, channel sets, groups) and surgery that removes channels."""
from .analysis import Analysis, analyse
from .core import ChannelGraph
from .groups import ChannelGroup, Member
from .rules import ChannelRule, Dense, Elementwise, Lock, PerChannel, register_channel_rule
from .surgery import PruneError
from .trace import TraceError, trace
from .traced_forwards import register_traced_forward

__all__ = ["ChannelGraph", "ChannelGroup", "Member", "TraceError", "PruneError", "trace", "analyse", "Analysis",
           "ChannelRule", "Dense", "Elementwise", "Lock", "PerChannel", "register_channel_rule",
           "register_traced_forward"]
