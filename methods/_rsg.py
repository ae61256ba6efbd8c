"""The RSG module (Wang, Lukasiewicz, Hu, Cai, Xu, CVPR 2021), as Jianf-Wang/RSG @ 3c50745
``Imbalanced_Classification/models/RSG.py`` computes it; used by ``methods/rsg.py`` (registers nothing).

Kept in the official's operation order (bmm selections, ``view(-1, C)`` of NCHW maps, sums divided by
the batch), so values match the official code on the same inputs; the changes are listed in
methods/rsg.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init


class RareSampleGenerator(nn.Module):
    """``RSG(n_center, feature_maps_shape=[C, H, W], num_classes, contrastive_module_dim, ...)``.

    ``forward(feature_maps, target, epoch)`` returns ``(feature_maps', loss_cesc, loss_mv, target')``:
    the maps with the generated tail-class maps appended (epochs after ``epoch_thresh``), the
    centre-estimation + contrastive loss, the mean MV loss over the transfer segments, and the labels.
    """

    def __init__(self, channels: int, num_classes: int, head_classes: Tensor, n_center: int = 15,
                 contrastive_module_dim: int = 256, transfer_strength: float = 1.0, epoch_thresh: int = 159) -> None:
        super().__init__()
        self.num_classes, self.C, self.n_center = num_classes, channels, n_center
        self.strength, self.epoch_thresh = transfer_strength, epoch_thresh
        self.contrastive_module_dim = contrastive_module_dim
        self.register_buffer("head_classes", head_classes.to(torch.bool).clone())  # class -> is a head class
        self.linear = nn.Parameter(torch.randn(num_classes, channels, n_center))
        self.bias = nn.Parameter(torch.ones(num_classes, n_center))
        self.centers = nn.Parameter(torch.zeros(num_classes, n_center, channels))
        self.vec_transformation_module = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1))
        # The official AvgPool2d(H) at the end: a global average over the (square) map, whatever its size.
        self.contrastive_module = nn.Sequential(
            nn.Conv2d(channels * 2, contrastive_module_dim, kernel_size=1, stride=1, padding=0), nn.ReLU(inplace=True),
            nn.Conv2d(contrastive_module_dim, contrastive_module_dim, kernel_size=3, stride=1, padding=1))
        self.contrastive_fc = nn.Linear(contrastive_module_dim, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init.normal_(m.weight)
                if m.bias is not None:
                    init.zeros_(m.bias)

    # --- pieces -----------------------------------------------------------------------------------
    @staticmethod
    def pooling(maps: Tensor) -> Tensor:
        return maps.mean(dim=(2, 3))

    def contrastive(self, pairs: Tensor, frozen: bool = False) -> Tensor:
        """contrastive_module → pool → contrastive_fc; ``frozen``: the parameters receive no gradient
        (the official sets their ``requires_grad = False`` in ``compute_mv_loss``)."""
        conv1, _, conv2 = self.contrastive_module
        fc = self.contrastive_fc
        w = (lambda p: p.detach()) if frozen else (lambda p: p)  # noqa: E731
        out = F.relu(F.conv2d(pairs, w(conv1.weight), w(conv1.bias)))
        out = F.conv2d(out, w(conv2.weight), w(conv2.bias), padding=1)
        return F.linear(self.pooling(out).reshape(-1, self.contrastive_module_dim), w(fc.weight), w(fc.bias))

    def gamma(self, maps: Tensor, target: Tensor) -> Tensor:
        """softmax over the class's centres of ``pool(f) · linear[y] + bias[y]`` (B × n_center)."""
        pooled = self.pooling(maps).reshape(-1, self.C)
        linear = self.linear[target].reshape(-1, self.C, self.n_center)
        bias = self.bias[target].reshape(-1, self.n_center)
        return F.softmax(torch.bmm(pooled.unsqueeze(1), linear).reshape(-1, self.n_center) + bias, dim=1)

    def class_centers(self, target: Tensor, h: int, w: int) -> Tensor:
        """The centres of each sample's class as maps (B × n_center × C × H × W)."""
        return self.centers[target].reshape(-1, self.n_center, self.C)[..., None, None].expand(-1, -1, -1, h, w)

    def compute_cesc_loss(self, feature_maps: Tensor, centers: Tensor, gamma: Tensor, target: Tensor,
                          epoch: int) -> Tensor:
        """``Σ_i Σ_k γ_ik ‖f_i − c_{y_i,k}‖² / B`` (+ the pair CE of the contrastive module up to the threshold)."""
        num = feature_maps.shape[0]
        diff = torch.pow(feature_maps.unsqueeze(1).expand(-1, self.n_center, -1, -1, -1) - centers, 2)
        loss = torch.sum(torch.bmm(gamma.unsqueeze(1), diff.reshape(num, self.n_center, -1))) / num
        if epoch <= self.epoch_thresh:
            half = num // 2  # pairs (i, half + i); an odd last sample is left out (the official needs even B)
            pairs = torch.cat([feature_maps[:half], feature_maps[half:2 * half]], dim=1)
            same = torch.eq(target[:half], target[half:2 * half]).long()
            loss = loss + F.cross_entropy(self.contrastive(pairs), same)
        return loss

    def compute_mv_loss(self, origin_feature: Tensor, origin_center: Tensor, target_center: Tensor,
                        target_features: Tensor, gamma_head: Tensor, gamma_tail: Tensor) -> tuple[Tensor, Tensor]:
        """Vector transfer from head maps to tail maps: ``(loss_mv, tail maps + T(f_h − c_h))``."""
        c, c_ = origin_center.detach(), target_center.detach()
        ori_f = origin_feature.detach()
        num = target_features.shape[0]
        rows = torch.arange(num, device=ori_f.device)
        c_o = c[rows, gamma_head.detach().argmax(dim=1)]  # the head sample's nearest centre (official: one-hot bmm)
        c_t = c_[rows, gamma_tail.detach().argmax(dim=1)]
        var_map = (ori_f - c_o).contiguous()
        var_map_t = self.vec_transformation_module(var_map).contiguous()
        target_features_vector = (target_features - c_t).contiguous()
        target_features_f = target_features + var_map_t
        # view(-1, C) of NCHW maps, as the official (rows of C consecutive values, not channel vectors)
        target_features_norm = F.normalize(target_features_vector.view(-1, self.C), dim=1)
        var_map_norm = F.normalize(var_map_t.view(-1, self.C), dim=1)
        pair_pred = self.contrastive(torch.cat([ori_f, var_map_t], dim=1), frozen=True)
        zeros = torch.zeros(num, dtype=torch.long, device=ori_f.device)
        loss = F.cross_entropy(pair_pred, zeros) + (
            torch.sum(torch.abs(torch.norm(var_map_t.view(-1, self.C), dim=1)
                                - torch.norm(var_map.view(-1, self.C), dim=1)))
            + torch.sum(torch.abs(target_features_norm * var_map_norm - torch.ones_like(target_features_norm)))) / num
        return loss, target_features_f

    # --- the module ---------------------------------------------------------------------------------
    def forward(self, feature_maps: Tensor, target: Tensor, epoch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        maps_detach = feature_maps.detach().contiguous()
        _, _, h, w = maps_detach.shape
        is_head = self.head_classes[target]
        gamma = self.gamma(maps_detach, target)
        loss_cesc = self.compute_cesc_loss(maps_detach, self.class_centers(target, h, w), gamma, target, epoch)
        loss_mv_total = torch.zeros_like(loss_cesc)
        maps_tail, maps_head = maps_detach[~is_head], maps_detach[is_head]
        target_tail, target_head = target[~is_head], target[is_head]
        num_tail, num_head = maps_tail.shape[0], maps_head.shape[0]
        segment = 1
        if num_tail != 0 and num_head != 0 and epoch > self.epoch_thresh:
            if num_head >= num_tail:
                segment = max(int(num_head * self.strength / num_tail), 1)
                for j in range(segment):
                    head = slice(j * num_tail, (j + 1) * num_tail)
                    loss_mv, generated = self._transfer(maps_head[head], target_head[head], maps_tail, target_tail,
                                                        h, w)
                    loss_mv_total = loss_mv_total + loss_mv
                    feature_maps = torch.cat((feature_maps, generated), dim=0)
                    target = torch.cat((target, target_tail), dim=0)
            else:
                segment = max(int(num_tail * self.strength / num_head), 1)
                for j in range(segment):
                    tail = slice(j * num_head, (j + 1) * num_head)
                    loss_mv, generated = self._transfer(maps_head, target_head, maps_tail[tail], target_tail[tail],
                                                        h, w)
                    feature_maps = torch.cat((feature_maps, generated), dim=0)
                    loss_mv_total = loss_mv_total + loss_mv
                    target = torch.cat((target, target_tail[tail]), dim=0)
        return feature_maps, loss_cesc, loss_mv_total / segment, target

    def official_forward(self, feature_maps: Tensor, head_class_lists, target: Tensor,
                         epoch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The official call ``RSG.forward(feature_maps, head_class_lists, target, epoch)``."""
        heads = torch.zeros_like(self.head_classes)
        heads[list(head_class_lists)] = True
        self.head_classes.copy_(heads)
        return self(feature_maps, target, epoch)

    def _transfer(self, head_maps: Tensor, head_target: Tensor, tail_maps: Tensor, tail_target: Tensor,
                  h: int, w: int) -> tuple[Tensor, Tensor]:
        gamma_head = self.gamma(head_maps, head_target)
        gamma_tail = self.gamma(tail_maps, tail_target)
        return self.compute_mv_loss(head_maps, self.class_centers(head_target, h, w),
                                    self.class_centers(tail_target, h, w), tail_maps, gamma_head, gamma_tail)
