"""Conversations: their records, one file each with an index, import and export, attached files and images."""
