"""`agentkv replay`: a trace's sessions sent to a live OpenAI- or Anthropic-compatible server, measured, and put
beside what the policy core predicts for the same requests.

alphabet (words that tokenize one to one) → synth (block ids → prompt text) → calibrate (the server agrees on
token counts) → client (one streamed request, errors by kind) → runner (sessions, timing, concurrency) →
results / plots / predict.
"""
