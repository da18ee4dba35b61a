"""Task: how a problem is posed (prompt templates, chat wrapping) and how an answer is checked (verifiers).
The TaskConfig settings object is shared by every stage that generates."""
