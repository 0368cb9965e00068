"""QDTrack embedding head: RoI features -> appearance embeddings used for association.

Mirrors mmtrack 0.14 ``QuasiDenseEmbedHead`` (num_convs=4, num_fcs=1, GN 32) so that the
``track_head.embed_head.*`` entries of an mmtrack checkpoint load 1:1 into this module.
"""

from torch import Tensor, nn
from torch.nn import functional as F


class ConvGNReLU(nn.Module):
    """3x3 conv -> GroupNorm -> ReLU, named like mmcv's ConvModule (``conv``, ``gn``).

    The conv has no bias because GroupNorm follows it (mmcv's ``bias='auto'``).
    """

    def __init__(self, in_channels: int, out_channels: int, gn_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.gn = nn.GroupNorm(gn_groups, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.gn(self.conv(x)))


class QuasiDenseEmbedHead(nn.Module):
    """convs (3x3 conv + GN + ReLU) -> flatten -> fcs (Linear + ReLU) -> fc_embed (Linear).

    Input: RoIAlign features ``[N, in_channels, roi_size, roi_size]``; output ``[N, embed_dim]``.
    The embedding is not normalised: QDTrack's losses and tracker use raw dot products.
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_convs: int = 4,
        conv_channels: int = 256,
        fc_dim: int = 1024,
        embed_dim: int = 256,
        roi_size: int = 7,
        gn_groups: int = 32,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.roi_size = roi_size
        self.convs = nn.ModuleList(
            ConvGNReLU(in_channels if i == 0 else conv_channels, conv_channels, gn_groups)
            for i in range(num_convs)
        )
        flat_channels = conv_channels if num_convs > 0 else in_channels
        self.fcs = nn.ModuleList([nn.Linear(flat_channels * roi_size * roi_size, fc_dim)])
        self.fc_embed = nn.Linear(fc_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmtrack's init: ConvModule's kaiming (fan_out, relu), GN 1/0, Xavier-uniform fcs,
        N(0, 0.01) for fc_embed, zero biases."""
        for block in self.convs:
            nn.init.kaiming_normal_(block.conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.ones_(block.gn.weight)
            nn.init.zeros_(block.gn.bias)
        for fc in self.fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_embed.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.fc_embed.bias)

    def forward(self, roi_feats: Tensor) -> Tensor:
        expected = (self.in_channels, self.roi_size, self.roi_size)
        if roi_feats.dim() != 4 or tuple(roi_feats.shape[1:]) != expected:
            raise ValueError(
                f"roi_feats must have shape [N, {expected[0]}, {expected[1]}, {expected[2]}], "
                f"got {list(roi_feats.shape)}"
            )
        x = roi_feats
        for block in self.convs:
            x = block(x)
        x = x.flatten(1)  # channel-major, as mmtrack: checkpoint fcs.0 columns depend on it
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.fc_embed(x)
