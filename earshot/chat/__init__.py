"""Questions and multi-turn, multi-audio chat over processed files (``/v1/conversations``)."""

from earshot.chat.models import Conversation, ConversationClip, ConversationTurn

__all__ = ["Conversation", "ConversationClip", "ConversationTurn"]
