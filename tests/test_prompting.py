"""The agents' shared prompt rendering stays torch-free, and the LLM judges find their agent factory without the
agents package writing into them (each check in a fresh interpreter, so earlier imports of the test run count not).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("module", ["search_gym.agents.openai_agent", "search_gym.agents.prompting"])
def test_the_http_agent_and_the_prompt_rendering_import_no_torch(module):
    out = _run(f"""
        import sys
        import {module}
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_importing_the_package_registers_nothing_with_the_judges():
    out = _run("""
        import sys
        import search_gym
        from search_gym.safety import llm_judge
        print(llm_judge._AGENT_FACTORY is None, "search_gym.agents" in sys.modules)
        factory = llm_judge.agent_factory()  # the installed entry point, loaded now
        print(f"{factory.__module__}.{factory.__name__}")
    """)
    assert out.split("\n")[:2] == ["True False", "search_gym.agents.registry.make_agent"]


def test_a_judge_builds_its_agent_by_name_through_the_entry_point(monkeypatch):
    from search_gym.agents import ScriptedAgent
    from search_gym.safety import llm_judge
    from search_gym.safety.instrument import make_judge

    monkeypatch.setattr(llm_judge, "_AGENTS", {})
    assert isinstance(llm_judge.LLMJudge("scripted").agent, ScriptedAgent)
    judge = make_judge("llm_query")
    assert isinstance(judge, llm_judge.LLMJudge) and judge._agent_name == "smollm2"  # built on first use

    made = []
    monkeypatch.setattr(llm_judge, "_AGENTS", {})
    llm_judge.register_agent_factory(lambda name, **kw: made.append(name) or ScriptedAgent())
    try:
        assert isinstance(llm_judge.LLMJudge("anything").agent, ScriptedAgent) and made == ["anything"]
    finally:
        llm_judge.register_agent_factory(None)
    assert llm_judge.agent_factory().__name__ == "make_agent"
