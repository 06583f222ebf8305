/* The path attribution of rows to a forest of trees (see artifact/paths.py).
 *
 * The trees are laid end to end, each node's two children side by side. A row at node
 * k goes to nodes[k].left where its value is below the threshold (as XGBoost's
 * prediction has it) or missing with default_left set, else to the node after it, and
 * that step adds step[child] to the contribution of the node's feature. A leaf stays
 * where it is and adds nothing, so every row takes depths[t] steps in tree t: four rows
 * walk a tree side by side, without branches, and the processor overlaps their walks.
 *
 * The caller checks the node numbers, the features and the shapes before it calls; out
 * starts at zero and holds m + 1 columns a row (the last, the bias, is not written).
 */
#include <math.h>
#include <stdint.h>

typedef struct {
    float threshold;
    int32_t feature;
    int32_t left;
    uint8_t default_left;
    uint8_t leaf;
    uint8_t unused[2];
} node_t;

static inline void advance(const node_t *nodes, const double *step, const float *row,
                           double *out, int32_t *at)
{
    const node_t *node = nodes + *at;
    const float value = row[node->feature];
    const int32_t right = isnan(value) ? !node->default_left : !(value < node->threshold);
    const int32_t next = node->leaf ? *at : node->left + right;
    out[node->feature] += node->leaf ? 0.0 : step[next];
    *at = next;
}

void path_contributions(int64_t n, int64_t m, const float *x, int64_t trees,
                        const int32_t *roots, const int32_t *depths, const node_t *nodes,
                        const double *step, double *out)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *r0 = x + i * m, *r1 = r0 + m, *r2 = r1 + m, *r3 = r2 + m;
        double *o0 = out + i * (m + 1), *o1 = o0 + m + 1, *o2 = o1 + m + 1, *o3 = o2 + m + 1;
        for (int64_t t = 0; t < trees; t++) {
            int32_t a0 = roots[t], a1 = a0, a2 = a0, a3 = a0;
            for (int32_t d = 0; d < depths[t]; d++) {
                advance(nodes, step, r0, o0, &a0);
                advance(nodes, step, r1, o1, &a1);
                advance(nodes, step, r2, o2, &a2);
                advance(nodes, step, r3, o3, &a3);
            }
        }
    }
    for (; i < n; i++) {
        const float *row = x + i * m;
        double *o = out + i * (m + 1);
        for (int64_t t = 0; t < trees; t++) {
            int32_t at = roots[t];
            for (int32_t d = 0; d < depths[t]; d++) {
                advance(nodes, step, row, o, &at);
            }
        }
    }
}
