/*
 * DPDK's fast-path calls are `static inline` in its headers, so no library
 * exports them: the shim compiles them once and exports them under `adp_`
 * names that bindgen then binds like any other function.
 */
#ifndef ADP_SHIM_H
#define ADP_SHIM_H
#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

uint16_t adp_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t adp_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *adp_pktmbuf_alloc(struct rte_mempool *mp);
int adp_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int n);
void adp_pktmbuf_free(struct rte_mbuf *m);
/* rte_errno is a per-lcore (thread-local) variable behind a macro. */
int adp_errno(void);
unsigned int adp_lcore_id(void);
/* Room after the data (tailroom) of a single-segment mbuf. */
uint16_t adp_pktmbuf_tailroom(const struct rte_mbuf *m);
unsigned int adp_mempool_avail(const struct rte_mempool *mp);
unsigned int adp_mempool_in_use(const struct rte_mempool *mp);
/* RTE_ETH_RSS_IP | TCP | UDP (function-like macros bindgen cannot read). */
uint64_t adp_rss_ip_tcp_udp(void);
/* RTE_ETH_RX_OFFLOAD_IPV4_CKSUM (RTE_BIT64, a function-like macro). */
uint64_t adp_rx_offload_ipv4_cksum(void);
#endif
