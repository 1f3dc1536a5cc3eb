"""The XLA flags lmjax's command-line processes add (lmjax/process/xla_flags.py)."""

from lmjax.process.xla_flags import DEFAULT_FLAGS, add_default_xla_flags

ALL = " ".join(DEFAULT_FLAGS)


def test_appends_once_and_keeps_other_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert add_default_xla_flags(env, (0, 10)) == f"--xla_force_host_platform_device_count=8 {ALL}"
    assert add_default_xla_flags(env, (0, 10)) == env["XLA_FLAGS"]  # idempotent
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
    assert env["XLA_FLAGS"].count("triton_gemm") == 1
    assert add_default_xla_flags({}, (0, 11)) == ALL


def test_users_own_value_kept():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot --xla_gpu_enable_triton_gemm=true"}
    assert add_default_xla_flags(env, (0, 10)) == env["XLA_FLAGS"]
    assert "ynn_fusion_type=dot" in env["XLA_FLAGS"] and "triton_gemm=true" in env["XLA_FLAGS"]


def test_off_switch_and_unchecked_jaxlib():
    env = {"LMJAX_XLA_DEFAULTS": "0"}
    assert add_default_xla_flags(env, (0, 10)) == "" and "XLA_FLAGS" not in env
    env = {}  # a jaxlib the flag was not checked on (it could abort XLA): add nothing
    assert add_default_xla_flags(env, (0, 9)) == "" and add_default_xla_flags(env, (0, 12)) == ""
    assert "XLA_FLAGS" not in env
