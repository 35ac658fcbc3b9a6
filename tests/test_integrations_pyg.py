"""PyG: our model takes a torch_geometric Batch (CSR built once per batch), a stock PyG model
trains with GraphSAM on our featurized molecules, and TransformerConv weights load into ours."""
import pytest
import torch

pyg_data = pytest.importorskip("torch_geometric.data")
pyg_nn = pytest.importorskip("torch_geometric.nn")
pytest.importorskip("rdkit")

import graphsam_ext.ops  # noqa: E402  (after the importorskips above)
from graphsam_ext.data import Featurizer, MoleculeItem, collate  # noqa: E402
from graphsam_ext.errors import UserError  # noqa: E402
from graphsam_ext.models import ModelConfig, MolecularGraphTransformer  # noqa: E402
from graphsam_ext.nn import GraphAttention  # noqa: E402
from graphsam_ext.optim import GraphSAM  # noqa: E402

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "O=C(O)c1ccccc1C(=O)O", "ClCCl",
          "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "C1CCNCC1", "[Na+].[Cl-]", "OCC(O)CO", "c1ccc2ccccc2c1", "CS(C)=O"]


@pytest.fixture(scope="module")
def molecules():
    featurizer = Featurizer()
    graphs = [featurizer(s) for s in SMILES]
    assert all(g is not None for g in graphs)
    # a target the model can learn from the atoms: the heavy-atom count, standardized
    counts = torch.tensor([float(g.num_nodes) for g in graphs])
    y = ((counts - counts.mean()) / counts.std()).unsqueeze(1)
    return featurizer, graphs, y


def _pyg_batch(graphs, y=None):
    data = [pyg_data.Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr) for g in graphs]
    if y is not None:
        for d, target in zip(data, y):
            d.y = target.view(1, -1)
    return pyg_data.Batch.from_data_list(data)


def _ours(graphs, y):
    return collate([MoleculeItem(g, t, torch.ones_like(t, dtype=torch.bool), "") for g, t in zip(graphs, y)])


def _model(featurizer, **kw):
    torch.manual_seed(0)
    config = ModelConfig(atom_dim=featurizer.atom_dim, edge_dim=featurizer.edge_dim, num_tasks=1, hidden=16,
                         layers=2, heads=2, edge_hidden=8, dropout=0.0, **kw)
    return MolecularGraphTransformer(config).eval()


def test_model_takes_a_pyg_batch_and_matches_batchgraph(molecules):
    featurizer, graphs, y = molecules
    model = _model(featurizer)
    pyg = _pyg_batch(graphs)
    # shuffle the edge order of the PyG batch: the CSR built at the model's entry must sort it
    perm = torch.randperm(pyg.edge_index.shape[1], generator=torch.Generator().manual_seed(1))
    pyg.edge_index, pyg.edge_attr = pyg.edge_index[:, perm], pyg.edge_attr[perm]
    with torch.no_grad():
        ours = model(_ours(graphs, y))
        theirs = model(pyg)
    assert theirs.shape == (len(SMILES), 1)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


def test_csr_is_built_once_per_batch_not_per_layer(molecules, monkeypatch):
    featurizer, graphs, _ = molecules
    model = _model(featurizer)
    assert len(model.layers) == 2
    calls = []
    real = graphsam_ext.ops.build_csr

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(graphsam_ext.ops, "build_csr", counting)
    with torch.no_grad():
        model(_pyg_batch(graphs))
    assert len(calls) == 1
    calls.clear()
    with torch.no_grad():
        model(_ours(graphs, torch.zeros(len(graphs), 1)))  # a BatchGraph carries its CSR
    assert calls == []


def test_single_pyg_graph_without_batch_vector(molecules):
    featurizer, graphs, y = molecules
    model = _model(featurizer)
    g = graphs[2]
    with torch.no_grad():
        out = model(pyg_data.Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr))
        ref = model(_ours([g], y[2:3]))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_pyg_input_without_edge_features_is_a_clear_error(molecules):
    featurizer, graphs, _ = molecules
    model = _model(featurizer)
    g = graphs[0]
    with pytest.raises(UserError, match="edge_attr"):
        model(pyg_data.Data(x=g.x, edge_index=g.edge_index))


def test_molecule_descriptors_travel_on_the_pyg_batch():
    featurizer = Featurizer(descriptors=True)
    graphs = [featurizer(s) for s in SMILES[:4]]
    model = _model(featurizer, mol_dim=featurizer.mol_dim)
    pyg = _pyg_batch(graphs)
    with pytest.raises(UserError, match="mol_features"):
        model(pyg)
    pyg.mol_features = torch.stack([g.mol_features for g in graphs])
    with torch.no_grad():
        torch.testing.assert_close(model(pyg), model(_ours(graphs, torch.zeros(4, 1))), rtol=1e-5, atol=1e-6)


class GINE(torch.nn.Module):
    """A stock PyG model: GINEConv layers, mean pooling, a linear head."""

    def __init__(self, atom_dim, edge_dim, hidden=32, layers=2):
        super().__init__()
        self.embed = torch.nn.Linear(atom_dim, hidden)
        self.convs = torch.nn.ModuleList(
            pyg_nn.GINEConv(torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                                torch.nn.Linear(hidden, hidden)), edge_dim=edge_dim)
            for _ in range(layers))
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, data):
        h = self.embed(data.x)
        for conv in self.convs:
            h = torch.relu(conv(h, data.edge_index, data.edge_attr))
        return self.head(pyg_nn.global_mean_pool(h, data.batch))


def test_stock_pyg_model_trains_with_graphsam(molecules):
    featurizer, graphs, y = molecules
    torch.manual_seed(0)
    model = GINE(featurizer.atom_dim, featurizer.edge_dim)
    batches = [_pyg_batch(graphs[i:i + 4], y[i:i + 4]) for i in range(0, len(graphs), 4)]
    opt = GraphSAM(model.parameters(), lr=3e-3, rho=0.05)
    loss_fn = torch.nn.MSELoss()

    def epoch_loss():
        with torch.no_grad():
            return sum(float(loss_fn(model(b), b.y)) for b in batches) / len(batches)

    before = epoch_loss()
    epochs = 30
    for _ in range(epochs):
        opt.start_epoch()
        for b in batches:
            def closure(b=b):
                loss = loss_fn(model(b), b.y)
                loss.backward()
                return loss
            opt.step(closure)
    after = epoch_loss()
    assert opt.closure_calls == epochs * (len(batches) + 1)  # GraphSAM: T + 1 evaluations per epoch
    assert after < 0.5 * before, (before, after)


class PygTransformer(torch.nn.Module):
    def __init__(self, dims, heads, edge_dim, conv):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            conv(dims[i], dims[i + 1] // heads, heads=heads, edge_dim=edge_dim) for i in range(len(dims) - 1))

    def forward(self, data):
        h = data.x
        for i, layer in enumerate(self.layers):
            h = layer(h, data.edge_index, data.edge_attr)
            if i < len(self.layers) - 1:
                h = torch.nn.functional.elu(h)
        return h


def test_transformerconv_weights_load_into_ours(molecules):
    featurizer, graphs, _ = molecules
    dims, heads = (featurizer.atom_dim, 32, 16), 4
    torch.manual_seed(0)
    theirs = PygTransformer(dims, heads, featurizer.edge_dim, pyg_nn.TransformerConv).eval()
    ours = PygTransformer(dims, heads, featurizer.edge_dim, GraphAttention).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: every parameter name and shape matches
    batch = _pyg_batch(graphs)
    with torch.no_grad():
        expected = theirs(batch)
        got = ours(batch)
    assert got.shape == (batch.num_nodes, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
