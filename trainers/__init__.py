"""Trainers for search-gym (installed as ``search_gym.trainers``).

Trainers attach to the environment through ``SearchVectorEnv`` (batched rollouts), ``info["env_text"]`` (the
environment-appended spans to mask out of the policy loss) and ``AgentStep`` token ids, logprobs and hidden
states. PPO, GRPO and representation-guided RL land here in later releases.
"""
