"""Model backends behind one protocol: Hugging Face + peft (+ TRL's GRPO), OpenAI-compatible
endpoints, the presets that say where weights come from, and the recorded model replay serves."""
