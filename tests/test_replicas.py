"""config.train.replicas: K seeds of one model in one jitted step.

Tolerance: replica k must follow the separate run of seed + k. The vmapped step runs the same
arithmetic as batched dots, whose float32 reductions may be ordered differently from the single
run's; measured here: 8.6e-8 relative over 8 steps on one device, and 1.4e-6 absolute between
the replicas split over the data axis of 8 devices and one device. 1e-5 relative (the tolerance
of the sharded-vs-single test in test_training.py) leaves > 7x headroom, while a replica drawing
another seed's batches or initialisation differs by > 1e-2.
"""

import json

import jax
import numpy as np
import pytest

import lmjax
from lmjax.config import base_config, resolve
from lmjax.errors import ConfigError, LmjaxError
from lmjax.training import sharding
from lmjax.training.loop import train
from test_training import mesh, tiny_config

RTOL = 1e-5
K = 2


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def column(workdir, name):
    return np.array([r[name] for r in rows(workdir) if name in r])


def one_device(c):
    c.mesh.update(mesh(1, 1, 1))
    return dict(devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """K=2 replicas of seeds 3 and 4 on one device, and the two separate runs."""
    root = tmp_path_factory.mktemp("replicas")
    c = tiny_config(replicas=K, seed=3)
    final = train(c, root / "both", progress=False, **one_device(c))
    separate = []
    for k in range(K):
        ck = tiny_config(seed=3 + k)
        separate.append(train(ck, root / f"seed{3 + k}", progress=False, **one_device(ck)))
    return root, final, separate


def test_each_replica_is_the_run_of_its_seed(replicated):
    root, final, separate = replicated
    per_replica = column(root / "both", "loss_replicas")  # [logged steps, K]
    assert per_replica.shape == (8, K)
    for k in range(K):
        np.testing.assert_allclose(per_replica[:, k], column(root / f"seed{3 + k}", "loss"), rtol=RTOL)
        np.testing.assert_allclose(final["val_loss_replicas"][k], separate[k]["val_loss"], rtol=RTOL)
    # The seeds differ (else this test could not tell replicas apart), and `loss` is their mean.
    assert abs(per_replica[-1, 0] - per_replica[-1, 1]) > 1e-3
    np.testing.assert_allclose(column(root / "both", "loss"), per_replica.mean(axis=1), rtol=1e-6)
    assert final["val_loss"] == pytest.approx(np.mean(final["val_loss_replicas"]))
    assert column(root / "both", "tokens")[-1] == 8 * 16 * 32  # one model's tokens, not K x


def test_replicas_over_the_data_axis_match_one_device(replicated, tmp_path):
    root, _, _ = replicated
    c = tiny_config(replicas=K, seed=3)
    c.mesh.update(mesh(2, 2, 2))  # K=2 fills data=2: each replica's batch splits over fsdp alone
    m = sharding.make_mesh(resolve(c).mesh)
    assert sharding.replica_axis(m, K) == "data"
    train(c, tmp_path, progress=False)
    np.testing.assert_allclose(column(tmp_path, "loss_replicas"), column(root / "both", "loss_replicas"),
                               rtol=RTOL)


def test_replicas_not_filling_the_data_axis(tmp_path):
    c = tiny_config(replicas=3, steps=2)
    c.mesh.update(mesh(8, 1, 1))  # 3 replicas on 8 data devices: every device holds all three
    assert sharding.replica_axis(sharding.make_mesh(resolve(c).mesh), 3) is None
    final = train(c, tmp_path, progress=False)
    assert len(final["val_loss_replicas"]) == 3


def test_resume_is_bitwise(replicated, tmp_path):
    root, _, _ = replicated
    c = tiny_config(replicas=K, seed=3)
    kw = one_device(c)
    train(c, tmp_path, progress=False, stop_at=3, **kw)
    train(c, tmp_path, progress=False, **kw)
    np.testing.assert_array_equal(column(tmp_path, "loss_replicas"), column(root / "both", "loss_replicas"))


def test_load_one_replica(replicated):
    root, final, separate = replicated
    run = lmjax.load(root / "both", replica=1)
    alone = lmjax.load(root / "seed4")
    assert run.replica == 1 and run.config.train.seed == 4 and run.config.train.replicas == 1
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(alone.params)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert run.evaluate()["loss"] == pytest.approx(separate[1]["val_loss"], rel=RTOL)
    logged = [x for x in run.metrics["loss"] if x is not None]  # the val row has no train loss
    np.testing.assert_array_equal(logged, column(root / "both", "loss_replicas")[:, 1])
    assert run.metrics["val_loss"][-1] == final["val_loss_replicas"][1]
    assert "loss_replicas" not in run.metrics
    assert lmjax.load(root / "both").replica == 0
    with pytest.raises(LmjaxError, match="replica=2 is not one of 0..1"):
        lmjax.load(root / "both", replica=2)


def test_changing_replicas_is_refused(replicated):
    root, _, _ = replicated
    c = tiny_config(replicas=3, seed=3)
    with pytest.raises(ConfigError, match=r"config.train.replicas: 2 -> 3"):
        train(c, root / "both", progress=False, **one_device(c))


def test_replicas_bad_config():
    c = base_config()
    c.model.family = "ngram"
    c.train.replicas = 2
    with pytest.raises(ConfigError, match="replicas is for models trained by steps"):
        resolve(c)
    c = tiny_config(replicas=0)
    with pytest.raises(ConfigError, match="replicas"):
        resolve(c)


def test_cli_eval_and_sample_one_replica(replicated, capsys):
    from lmjax.cli.main import main

    root, _, separate = replicated
    assert main(["eval", f"--workdir={root / 'both'}", "--replica=1"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["loss"] == pytest.approx(
        separate[1]["val_loss"], rel=RTOL)
    # Sampled, not greedy: after 8 steps both replicas' greedy continuation is spaces.
    assert main(["sample", f"--workdir={root / 'both'}", "--replica=1", "--prompt=ab",
                 "--max_new_tokens=12", "--temperature=1", "--seed=0"]) == 0
    sampled = [lmjax.load(root / "both", replica=k).generate("ab", max_new_tokens=12, temperature=1.0, seed=0)
               for k in range(K)]
    assert sampled[0] != sampled[1]  # else this could not tell which replica sampled
    assert capsys.readouterr().out == f"--- prompt: 'ab'\nab{sampled[1]}\n"
    assert main(["eval", f"--workdir={root / 'both'}", "--replica=7"]) != 0
    assert "replica=7 is not one of 0..1" in capsys.readouterr().err
