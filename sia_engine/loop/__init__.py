"""The loop (the application layer): the improvement loop, its settings and gate, the Task
protocol and its registry, Feedback Agent policies and training recipes."""
